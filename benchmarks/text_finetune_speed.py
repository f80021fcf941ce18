"""Examples/s of one fine-tuning step (forward source + target, backward, AdamW) of MiniLM for ERM, L2-SP, DANN, MMD.

    python benchmarks/text_finetune_speed.py BATCH MAX_LENGTH STEPS      # e.g. 16 128 3

Builds one TransferModule per method on the same pretrained encoder (../shared/models/all-MiniLM-L6-v2), tokenizes
books (labelled) and kitchen (unlabelled) reviews from ../shared/data, and times the steps of all methods interleaved
(so the machine's load hits every method alike); prints the median step time, examples/s and the ratio to ERM.
"""
import sys, time, torch
from da.data.domain import load_domain
from da.losses import L2SP, MKMMD, DomainAdversarialLoss
from da.losses.base import StepContext
from da.module import TransferModule

MINILM, ROOT = "../shared/models/all-MiniLM-L6-v2", "../shared/data"
bs, L, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = load_domain("amazon/books", root=ROOT, tokenizer=MINILM, max_length=L)["all"]
tgt = load_domain("amazon/kitchen", root=ROOT, tokenizer=MINILM, max_length=L)["all"]
collate = src.meta["collate_fn"]
x_s, y_s = collate([src.dataset[i] for i in range(0, 2000, 2000 // bs)][:bs])
x_t, _ = collate([tgt.dataset[i] for i in range(0, 2000, 2000 // bs)][:bs])
methods = {"erm": [], "l2sp": [L2SP(alpha=0.01, beta=0.01)], "dann": [DomainAdversarialLoss(weight=1.0, hidden=1024)],
           "mmd": [MKMMD(weight=1.0)]}
models = {k: TransferModule(num_classes=2, input_shape=[], backbone="hf", backbone_args={"name_or_path": MINILM},
                            losses=v).train() for k, v in methods.items()}
opts = {k: torch.optim.AdamW(m.parameters(), lr=2e-5) for k, m in models.items()}
times = {k: [] for k in models}
for rep in range(steps + 1):
    for k, m in models.items():  # interleaved, so machine load hits every method alike
        t = time.perf_counter()
        f_s, l_s = m.features_and_logits(x_s)
        f_t, l_t = m.features_and_logits(x_t) if k in ("dann", "mmd") else (None, None)
        ctx = StepContext(f_s=f_s, f_t=f_t, logits_s=l_s, logits_t=l_t, y_s=y_s, d_s=torch.zeros_like(y_s),
                          progress=0.5, module=m)
        loss = torch.nn.functional.cross_entropy(l_s, y_s) + sum(t_.current_weight(0.5) * t_(ctx) for t_ in m.losses)
        opts[k].zero_grad(); loss.backward(); opts[k].step()
        if rep:  # the first step is warm-up
            times[k].append(time.perf_counter() - t)
med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
print(f"threads={torch.get_num_threads()} batch={bs}+{bs} max_length={L} mean tokens/review s={x_s['attention_mask'].sum(1).float().mean():.0f}")
for k, v in med.items():
    n = bs * (2 if k in ("dann", "mmd") else 1)
    print(f"{k:5s} median step {v:.2f} s  {bs / v:.1f} labelled ex/s  ({n / v:.1f} forwarded ex/s)  x{v / med['erm']:.2f} vs ERM")
