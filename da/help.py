"""Help that fits on a screen: ``da fit --help`` (da's own options first), ``da list ...`` and "did you mean".

* :func:`short_help` -- ``da fit|validate|test --help``: configs, run, ``--data.*`` and ``--model.*`` options (read
  from the same class signatures LightningCLI reads, so it never goes stale; one line each) and the few Trainer flags
  a run usually changes. ``--help-all`` prints LightningCLI's complete list (every Trainer flag).
* :func:`list_main` -- ``da list datasets|methods|recipes|backbones|grids``: what exists, one line each (datasets from
  the registry, methods from the first comment line of ``configs/method/*.yaml``, recipes from
  ``configs/benchmark/*.yaml``, grids from ``experiments/*.yaml``).
* :func:`parser_class` -- LightningCLI's parser whose errors are one line plus a suggestion (difflib over the
  parser's option names) instead of the whole usage block.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

WIDTH = 118
SKIP = {"--data", "--model", "--model.num_classes", "--model.input_shape", "--model.num_sources", "--data.seed",
        "--model.losses.help"}  # config-file loaders, values linked from the data, the seed (= --seed_everything)
TRAINER_FLAGS = (
    ("--trainer.max_steps N", "training budget in optimiser steps (da default 2000)"),
    ("--trainer.val_check_interval N", "validate every N steps (da default 500)"),
    ("--trainer.accelerator auto|cpu|gpu", "device type; --trainer.devices N, --trainer.strategy ddp for several"),
    ("--trainer.precision 32|bf16-mixed|16-mixed", "numeric precision"),
    ("--trainer.logger WandbLogger", "also log to Weights & Biases (offline unless logged in); CSV is always on"),
    ("--trainer.enable_progress_bar false", "no progress display"),
)


def _first_sentence(text: str) -> str:
    text = re.sub(r"\s+", " ", (text or "").replace("``", "`")).strip()
    text = text.replace("e.g.", "e\0g\0").replace("i.e.", "i\0e\0")  # not sentence ends
    m = re.match(r"(.+?[.;])(\s|$)", text)
    return (m.group(1) if m else text).rstrip(".;").replace("\0", ".")


def _line(flag: str, text: str, pad: int = 34) -> str:
    line = f"  {flag:<{pad}} {text}" if len(flag) < pad else f"  {flag}  {text}"
    return line if len(line) <= WIDTH else line[: WIDTH - 3] + "..."


def option_lines(prefix: str, cls) -> List[str]:
    """One line per ``--<prefix>.<arg>`` of ``cls``'s signature: flag, first sentence of its doc, default."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(cls, prefix)
    lines = []
    for action in parser._actions:
        flag = next((o for o in action.option_strings if o.startswith("--") and not o.endswith("+")), None)
        if flag is None or flag in SKIP or flag == "--help":
            continue
        default = action.default
        shown = "" if default is None or str(default) == "==SUPPRESS==" else f"(default {default})"
        lines.append(_line(flag, " ".join(t for t in (_first_sentence(action.help or ""), shown) if t)))
    return lines


def short_help(subcommand: str = "fit") -> str:
    from da.data.datamodule import DomainDataModule
    from da.module import TransferModule

    what = {"fit": "train on the source domain(s), adapt to the target, test on both, write <run_dir>/result.json",
            "validate": "evaluate on the validation splits",
            "test": "evaluate a checkpoint (--ckpt_path) on the source and target test splits"}.get(subcommand, "")
    out = [
        f"usage: da {subcommand} [--config FILE|NAME]... [--KEY VALUE]...",
        "",
        f"da {subcommand}: {what}.",
        "Configs compose left to right; any key below can be overridden after them.",
        "",
        "what exists:  da list datasets | methods | recipes | backbones | grids",
        f"all options:  da {subcommand} --help-all   (LightningCLI's full list, every Trainer flag)",
        "",
        "configs (a file, or a packaged name from any folder):",
        _line("--config quickstart", "the built-in offline task: fonts -> handwritten digits, LeNet, 2,000 steps"),
        _line("--config method/dann", "add a method (da list methods); a later --config replaces the loss list"),
        _line("--config benchmark/<recipe>", "a benchmark protocol (da list recipes)"),
        _line("--print_config", "print the resolved config and exit"),
        "",
        "run:",
        _line("--seed_everything N", "seed of the model, the splits and the data order (default 0)"),
        _line("--run_dir DIR", "directory of this run (default runs/<task>/<method>/<time>)"),
        _line("--ckpt_path PATH|last", "resume from / evaluate a checkpoint"),
        "",
        "data (--data.*; domains are <dataset>/<domain>, see da list datasets):",
        *option_lines("data", DomainDataModule),
        "",
        "model (--model.*; a loss term's own knobs: --model.losses.init_args.<name>):",
        *option_lines("model", TransferModule),
        "",
        "trainer (the usual ones; --help-all for the rest):",
        *[_line(flag, text, 40) for flag, text in TRAINER_FLAGS],
        "",
        "examples:",
        "  da fit --config quickstart --config method/dann --seed_everything 1",
        "  da fit --config configs/data/office31.yaml --data.sources [office31/amazon] --data.target office31/webcam",
    ]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------- da list
def _yaml_header(path: Path) -> str:
    """The first comment line of a YAML file (its one-line description), without the ``#``."""
    try:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("#"):
                return line.lstrip("# ").strip()
            if line.strip():
                break
    except OSError:
        pass
    return ""


def _yaml_lines(folder: Path, prefix: str = "") -> List[str]:
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.yaml") if p.is_file())
    return [_line(prefix + p.stem, _yaml_header(p) or "(no description line)", 24) for p in files]


def list_datasets() -> List[str]:
    from da.data.domain import dataset_names, get_dataset

    out = []
    for name in dataset_names():
        info = get_dataset(name)
        domains = ", ".join(info.domains) if info.domains else "any"
        out.append(_line(name, f"{info.modality}; domains: {domains}. {_first_sentence(info.description)}", 14))
    return out


def list_backbones() -> List[str]:
    from da.models import backbones as B

    named = [("lenet", getattr(B, "LeNet", None)), ("lenet_bn", getattr(B, "LeNetBN", None)), ("mlp", getattr(B, "MLP", None)),
             ("linear", getattr(B, "Flatten", None)), ("hf", getattr(B, "_hf", None)),
             ("branches", getattr(B, "_branches", None))]
    fallback = {"hf": "a Hugging Face transformer encoder for text (docs/text.md)"}
    out = [_line(name, _first_sentence(obj.__doc__ or "") or fallback.get(name, name), 14)
           for name, obj in named if obj is not None]
    try:
        import torchvision

        models = torchvision.models.list_models(module=torchvision.models)
        sample = ", ".join(m for m in ("resnet18", "resnet50", "vit_b_16") if m in models)
        out.append(_line("<torchvision>", f"any of torchvision's {len(models)} classification models ({sample}, ...); "
                                          f"--model.backbone_args '{{pretrained: true}}' for ImageNet weights", 14))
    except ImportError:
        pass
    out.append(_line("<pkg.mod.Class>", "your own nn.Module with an int attribute `out_features`", 14))
    return out


LISTS = ("datasets", "methods", "recipes", "backbones", "grids")


def list_lines(what: str) -> List[str]:
    from da.errors import UserError, unknown_name
    from da.resources import folder

    if what == "datasets":
        return list_datasets()
    if what == "methods":
        return _yaml_lines(folder("configs") / "method", "method/")
    if what == "recipes":
        lines = _yaml_lines(folder("configs") / "benchmark", "benchmark/")
        return lines or ["  (no recipe in configs/benchmark/ yet; the task configs are in configs/data/: "
                         + ", ".join(p.stem for p in sorted((folder("configs") / "data").glob("*.yaml"))) + ")"]
    if what == "backbones":
        return list_backbones()
    if what == "grids":
        return _yaml_lines(folder("experiments"))
    raise UserError(str(unknown_name("list", what, LISTS)) + "; usage: da list " + "|".join(LISTS))


def list_main(argv: Optional[Sequence[str]] = None) -> int:
    """``da list [datasets|methods|recipes|backbones|grids]``: what exists, one line each (all lists without one)."""
    argv = list(argv or [])
    if argv and argv[0] in ("-h", "--help"):
        print(f"usage: da list [{'|'.join(LISTS)}]\n\n{list_main.__doc__}")
        return 0
    for i, what in enumerate(argv or LISTS):
        if len(argv) != 1:
            print(("" if i == 0 else "\n") + f"{what}:")
        print("\n".join(list_lines(what)))
    return 0


# ---------------------------------------------------------------------------------------------- did you mean
def suggest(flag: str, options: Iterable[str]) -> Optional[str]:
    """The closest option name to ``flag`` (difflib ratio >= 0.6), else ``None``."""
    name = flag.split("=", 1)[0]
    close = difflib.get_close_matches(name, sorted(set(options)), n=1, cutoff=0.6)
    return close[0] if close else None


def _option_names(parser) -> List[str]:
    names = []
    for action in getattr(parser, "_actions", []):
        names += [o for o in action.option_strings if o.startswith("--") and not o.endswith("+")]
        for sub in (getattr(action, "choices", None) or {}).values() if isinstance(getattr(action, "choices", None),
                                                                                   dict) else ():
            names += _option_names(sub)
    return names


def short_error(message: str, options: Iterable[str], prog: str) -> str:
    """``da fit: error: <message>; did you mean --trainer.max_steps?`` plus where to look."""
    options = list(options)
    message = message.strip()
    hints = []
    m = re.search(r"nrecognized arguments?:\s*(.*)", message, flags=re.S)
    if m:
        for tok in m.group(1).split():
            if tok.startswith("--"):
                best = suggest(tok, options)
                if best:
                    hints.append((tok.split("=", 1)[0], best))
    hint = ""
    if len(hints) == 1:
        hint = f"; did you mean {hints[0][1]}?"
    elif hints:
        hint = "; did you mean " + ", ".join(f"{best} (for {bad})" for bad, best in hints) + "?"
    return (f"{prog}: error: {message}{hint}\n"
            f"(`{prog} --help` lists da's options, `{prog} --help-all` every option, `da list` what exists)\n")


def parser_class():
    """LightningCLI's parser class with one-line errors (see :func:`short_error`)."""
    from pytorch_lightning.cli import LightningArgumentParser

    class DAArgumentParser(LightningArgumentParser):
        def error(self, message: str, ex: Optional[Exception] = None):
            if not self.exit_on_error:
                return super().error(message, ex)
            parser = getattr(ex, "subcommand_parser", None) or self
            sub = next((a for a in sys.argv[1:] + parser.prog.split() if a in ("fit", "validate", "test")), "")
            sys.stderr.write(short_error(message, _option_names(parser) + _option_names(self), f"da {sub}".strip()))
            sys.exit(2)

    return DAArgumentParser
