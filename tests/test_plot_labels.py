"""Plot fixes: titles wrapped to the figure (not clipped); curves of runs that differ only by a sweep parameter
get that parameter in their legend labels."""

import json

from matplotlib.figure import Figure

from da.experiments import plots


def _title_inside(fig) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    return box.x0 >= 0 and box.x1 <= fig.bbox.width


def test_long_title_is_wrapped_to_the_figure():
    long = "test/target_acc vs model.losses[0].init_args.alpha (mean ± std over seeds) on every task of the sweep"
    fig = Figure(figsize=(5.0, 4.0))
    fig.suptitle(long, fontsize=12)
    assert not _title_inside(fig)  # as it was: clipped
    fig = Figure(figsize=(5.0, 4.0))
    fig.suptitle(plots.fit_title(fig, long), fontsize=12)
    assert _title_inside(fig) and "\n" in fig._suptitle.get_text()


def test_plot_param_title_fits(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: seen.append(self))
    recs = [{"schema": 1, "status": "finished", "task": "a->b", "method": "l2sp", "seed": s, "metrics":
             {"test/target_acc": 0.5 + 0.1 * a}, "sweep": {"params": {"model.losses[0].init_args.alpha": a}}}
            for s in (0, 1) for a in (0.01, 1.0)]
    plots.plot_param(recs, "model.losses[0].init_args.alpha", tmp_path / "p.png")
    assert _title_inside(seen[0])


def _run(tmp_path, name, weight, seed=0):
    d = tmp_path / name
    d.mkdir()
    (d / "result.json").write_text(json.dumps({
        "schema": 1, "status": "finished", "task": "a->b", "method": "dann", "seed": seed, "metrics": {},
        "sweep": {"name": "g", "params": {"model.losses[0].init_args.weight": weight, "model.lr": 0.01,
                                          "seed": seed}}}))
    (d / "metrics.csv").write_text("step,train/loss,val/source_acc\n1,1.0,\n2,0.5,0.9\n")
    return d


def test_curves_labels_name_the_differing_sweep_parameter(tmp_path):
    runs = [_run(tmp_path, "r1", 0.1), _run(tmp_path, "r2", 1.0), _run(tmp_path, "r3", 1.0, seed=1)]
    assert plots.run_labels(runs) == ["dann a->b s0 weight=0.1", "dann a->b s0 weight=1.0", "dann a->b s1"]
    out = plots.plot_curves(runs, tmp_path / "c.png")
    assert out.is_file()
