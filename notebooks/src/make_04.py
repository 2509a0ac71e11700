"""Generate notebooks/04_dynamic_upsampling.ipynb ("Dynamic upsampling revisited"), without outputs.

Run: python notebooks/src/make_04.py [output_dir]   (default: notebooks/)
"""
from __future__ import annotations

from _nbgen import COLAB_CELL, GLUE_CELL, write

NAME = "04_dynamic_upsampling.ipynb"

CELLS = [
    ("md", r"""# Dynamic upsampling revisited

:::{admonition} Learning goals
:class: tip

After this chapter you can

* write any dynamic upsampler as **kernel generation** followed by **feature assembly**, and
  say for CARAFE, IndexNet, A2U, FADE, DySample and SAPA where its kernel comes from
  (decoder feature, encoder feature, or both);
* build all of them from one function, `sapa.build_upsampler`, and read their kernels;
* explain, on a toy scene with a sharp boundary and a noisy encoder feature, why kernels
  computed from the decoder alone are **coarse**, kernels computed from the encoder alone are
  **noisy**, and similarity-based kernels can be **sharp and clean**;
* recompute the paper's complexity table (Table 1) by counting, and account for every gap
  between the count and the paper's formulas.
:::
"""),
    ("code", COLAB_CELL),
    ("code", GLUE_CELL + """

import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import sapa
from sapa.complexity import count_params, format_table, table1

torch.manual_seed(0)
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and robust on shared machines
PROFILE = sapa.get_profile()
print("sapa", sapa.__version__, "| torch", torch.__version__, "| profile", PROFILE)"""),
    ("md", r"""## One frame for every dynamic upsampler

Let $X \in \mathbb{R}^{H \times W \times C}$ be the decoder feature to upsample and
$Y \in \mathbb{R}^{2H \times 2W \times C}$ the encoder feature of the same stage. For an output
point $l' = (i', j')$ let $l = \lfloor l'/2 \rfloor$ be its *window centre* in $X$ and
$\mathcal{I} = \{-r, \dots, r\}^2$, $r = \lfloor K/2 \rfloor$, the offsets of a $K \times K$
window. Section 3 of {cite:t}`sapa2022` writes every dynamic upsampler in two steps.
**Kernel generation** predicts a normalised kernel from a neighbourhood $\mathcal{N}_{l'}$,

$$
\mathcal{W}_{l'} = \operatorname{norm}\big(\psi(\mathcal{N}_{l'})\big),
$$ (eq-kernel-generation)

where $\psi$ is a small network and $\mathcal{N}_{l'}$ is taken from $Y$ around $l'$, from $X$
around $l$, or from both. **Feature assembly** then mixes the window of the decoder feature:

$$
X'_{l'} = \sum_{p \in \mathcal{I}} \mathcal{W}_{l', p}\, X_{l + p}.
$$ (eq-feature-assembly)

The operators differ only in $\psi$, in the source of $\mathcal{N}_{l'}$, and in what they
assemble:

| operator | kernel from | $\psi$ | norm | assembly |
|---|---|---|---|---|
| nearest, bilinear | nothing (fixed) | none | | fixed weights on $X$ |
| CARAFE {cite:p}`carafe2019` | decoder $X$ only | 1x1 conv $C\to 64$, 3x3 conv $\to 4K^2$, pixel shuffle | softmax | Eq. {eq}`eq-feature-assembly`, $K = 5$ |
| IndexNet {cite:p}`indexnet2019` | encoder $Y$ only | strided 4x4 conv, BN, ReLU6, 1x1 conv | sigmoid | index $\times$ nearest($X$) (a $1 \times 1$ "kernel") |
| A2U {cite:p}`a2u2021` | encoder $Y$ only | per-sample low-rank affinity of $Y$ | sigmoid + softmax | Eq. {eq}`eq-feature-assembly`, $K = 3$ |
| FADE {cite:p}`fade2022` | both | semi-shift 3x3 conv of $Y$ and $X$ | softmax | Eq. {eq}`eq-feature-assembly`, $K = 5$, gated with $Y$ |
| DySample {cite:p}`dysample2023` | decoder $X$ only | 1x1 conv $\to$ offsets | none | bilinear point sampling of $X$ |
| SAPA {cite:p}`sapa2022` | both | similarity $\langle q(Y_{l'}), k(X_{l+p}) \rangle$ | softmax | Eq. {eq}`eq-feature-assembly`, $K = 5$ |

DySample does not fit the frame literally: it *moves* one sampling point per output pixel
instead of weighting a fixed window, which is Eq. {eq}`eq-feature-assembly` with a bilinear
$2 \times 2$ kernel around a learned position. The variant SAPA-D of this package does the same
for SAPA: it keeps the similarity kernel but lets the $3 \times 3$ window points move
(the docstring of `sapa.upsamplers.SAPADynamic` gives the exact design).

All of them are built by one function:
"""),
    ("code", """C = 256
rows = []
for name in sapa.available_upsamplers():
    up = sapa.build_upsampler(name, C)
    rows.append(f"| {name} | {'yes' if up.guided else 'no'} | {count_params(up):,} |")
display(Markdown("| upsampler | needs the guide $Y$ | parameters at C = 256 |\\n|---|---|---|\\n" + "\\n".join(rows)))"""),
    ("md", r"""## A toy scene: a sharp boundary and a noisy encoder

We reuse the picture on the wall of the first chapter, now as *features*. Every scene is a
$32 \times 32$ label map $L$ (a random disk, the *picture*, on the *wall*). The decoder sees
it at $16 \times 16$, one label per $2 \times 2$ block, and represents the two clusters by two
vectors $a$, $b \in \mathbb{R}^C$: $X = a$ on the wall and $X = b$ on the picture. The encoder
sees the full resolution, with its *own* two vectors $a_Y$, $b_Y$ (encoder and decoder
features live in different spaces) plus strong noise, the texture that makes encoder
features useful near boundaries but harmful in flat regions.

The ideal upsampled feature is $T = a$ on the wall and $T = b$ on the picture **at high
resolution**: the decoder's semantics with the encoder's boundary. We score a map $Z$ by its
*picture-ness* $t = \langle Z - a, b - a \rangle / \lVert b - a \rVert^2$ (0 on the wall, 1 on
the picture).
"""),
    ("code", """C, NOISE = 8, 0.6
gen = torch.Generator().manual_seed(0)
a, b = torch.randn(2, C, generator=gen)            # decoder cluster vectors
a_y, b_y = torch.randn(2, C, generator=gen)        # encoder cluster vectors


def scenes(n, size=32, generator=gen):
    \"\"\"n scenes: decoder X (n, C, size/2, size/2), encoder Y and target T (n, C, size, size).\"\"\"
    r = torch.arange(size, dtype=torch.float32) + 0.5
    cy, cx = torch.rand(2, n, 1, 1, generator=generator) * size * 0.5 + size * 0.25
    rad = torch.rand(n, 1, 1, generator=generator) * size * 0.2 + size * 0.15
    L = (((r[:, None] - cy) ** 2 + (r[None, :] - cx) ** 2) <= rad**2).float()[:, None]   # (n, 1, s, s)
    L_low = (F.avg_pool2d(L, 2) >= 0.5).float()
    embed = lambda lab, u, v: u.view(1, C, 1, 1) * (1 - lab) + v.view(1, C, 1, 1) * lab
    X = embed(L_low, a, b)
    Y = embed(L, a_y, b_y) + NOISE * torch.randn(n, C, size, size, generator=generator)
    return X, Y, embed(L, a, b), L


def pictureness(Z):
    return torch.einsum("bchw,c->bhw", Z - a.view(1, C, 1, 1), b - a) / (b - a).pow(2).sum()


X_train, Y_train, T_train, _ = scenes(8)
X_test, Y_test, T_test, L_test = scenes(8)
fig, ax = plt.subplots(1, 4, figsize=(11, 2.9))
for axis, img, title in zip(ax, [L_test[0, 0], pictureness(X_test)[0], Y_test[0, 0], pictureness(T_test)[0]],
                            ["labels L (32 x 32)", "decoder X: picture-ness (16 x 16)",
                             "encoder Y: channel 0 (noisy)", "target T: picture-ness"]):
    axis.imshow(img, cmap="viridis"); axis.set_title(title, fontsize=9); axis.axis("off")
plt.tight_layout(); plt.show()"""),
    ("md", r"""## Fitting every operator briefly

Untrained operators would show their initialisation, not their design: CARAFE starts with
near-uniform kernels, SAPA with near-uniform kernels too (its projections start at
std 0.02), IndexNet with random indices. So we fit each operator for a few hundred Adam steps
to map $(X, Y)$ to $T$ on 8 training scenes, then look at 8 held-out scenes. The operators
keep their published designs; only their parameters are fitted. Nearest and bilinear have
nothing to fit. On a CPU this takes a few seconds per operator (the `full` profile fits longer).

We report the error separately on the **boundary band** (points within two pixels of the
boundary, where the affiliation is hard) and in the **regions** (everything else, where a good
kernel must simply average and ignore the encoder's noise).
"""),
    ("code", """NAMES = ["nearest", "bilinear", "carafe", "indexnet-hin", "a2u", "fade", "dysample", "sapa-b", "sapa-g", "sapa-d"]
STEPS = 400 if PROFILE == "full" else 100

band = (F.max_pool2d(L_test, 5, 1, 2) != -F.max_pool2d(-L_test, 5, 1, 2))[:, 0]   # boundary band (n, 32, 32)


def errors(Z):
    e = (pictureness(Z) - pictureness(T_test)).abs()
    return e[band].mean().item(), e[~band].mean().item()


models, table = {}, []
for name in NAMES:
    torch.manual_seed(0)
    up = sapa.build_upsampler(name, C)
    t0 = time.perf_counter()
    params = [p for p in up.parameters() if p.requires_grad]
    if params:
        opt = torch.optim.Adam(params, lr=2e-2)
        for step in range(STEPS):
            loss = F.mse_loss(up(X_train, Y_train), T_train)
            opt.zero_grad(); loss.backward(); opt.step()
    up.eval()
    with torch.no_grad():
        err_b, err_r = errors(up(X_test, Y_test))
    models[name] = up
    table.append((name, count_params(up), err_b, err_r, time.perf_counter() - t0))

display(Markdown("| upsampler | params | error, boundary band | error, regions | fit time (s) |\\n|---|---|---|---|---|\\n"
                 + "\\n".join(f"| {n} | {p:,} | {eb:.3f} | {er:.3f} | {t:.1f} |" for n, p, eb, er, t in table)))
res = {n: (eb, er) for n, _, eb, er, _ in table}
glue("steps", STEPS)
glue("sapa_b_band", f"{res['sapa-b'][0]:.3f}")
glue("bilinear_band", f"{res['bilinear'][0]:.3f}")
glue("indexnet_region", f"{res['indexnet-hin'][1]:.3f}")
glue("sapa_b_region", f"{res['sapa-b'][1]:.3f}")"""),
    ("md", r"""The errors are mean absolute errors of the picture-ness (0 is perfect, 1 is a point put in
the wrong cluster). In this run SAPA-B reaches {glue:}`sapa_b_band` in the boundary band where
bilinear interpolation gets {glue:}`bilinear_band`, and {glue:}`sapa_b_region` in the regions,
where IndexNet's encoder-driven index gets {glue:}`indexnet_region`. A toy fit of
{glue:}`steps` steps says nothing about the paper's benchmark numbers; it shows what each
design *can* express.

## Kernel maps and upsampled features

Figure 2 of {cite:t}`sapa2022` compares kernel maps. A kernel is a $K \times K$ field per output
point; to draw it as an image we show its **largest weight** $\max_p \mathcal{W}_{l',p}$, which
is $1/K^2$ for an averaging kernel (flat regions, as Eq. 4 of the paper asks) and close to 1
for a kernel that selects a few points (boundaries). For IndexNet the kernel is a single
index value, shown as is; for DySample the length of the learned offset (in low-res pixels).
Each panel has its own colour scale (from its minimum to its 99th percentile), so compare the
*patterns*, not the brightness across panels.
"""),
    ("code", """def sapa_kernels(up, x, y):
    \"\"\"SAPA's normalised kernels (B, K*K, H', W'), computed the long way (unfold + softmax).\"\"\"
    s = up.sapa
    q, k = s.query_key(x, y)
    K, (H, W) = s.kernel_size, k.shape[-2:]
    rows, cols = sapa.window_centres(q.shape[-2], H), sapa.window_centres(q.shape[-1], W)
    k_win = F.unfold(k, K, padding=K // 2).view(k.shape[0], k.shape[1], K * K, H, W)[..., rows, :][..., cols]
    return torch.einsum("bdhw,bdkhw->bkhw", q, k_win).softmax(dim=1)


def kernel_map(name, up, x, y):
    \"\"\"A (B, H', W') image of the kernels of one operator and a short label.\"\"\"
    if name == "carafe":
        return up.kernels(x).amax(1), "max weight"
    if name == "a2u":
        return up.kernels(y).amax(1), "max weight"
    if name == "fade":
        return up.kernels(x, y).amax(1), "max weight"
    if name.startswith("sapa-") and name != "sapa-d":
        return sapa_kernels(up, x, y).amax(1), "max weight"
    if name == "sapa-d":
        return up.kernels(x, y)[0].amax(2).mean(1), "max weight (mean of groups)"
    if name == "indexnet-hin":
        return up.decoder_index(y)[:, 0], "index"
    if name == "dysample":
        return up.offsets(x, learned_only=True).norm(dim=1).mean(1), "|offset|"
    return None, ""


shown = [n for n in NAMES if n not in ("nearest", "bilinear")]
fig, ax = plt.subplots(2, len(shown), figsize=(1.9 * len(shown), 4.3))
with torch.no_grad():
    for j, name in enumerate(shown):
        km, label = kernel_map(name, models[name], X_test, Y_test)
        img = km[0]
        ax[0, j].imshow(img, cmap="magma", vmin=img.min().item(), vmax=torch.quantile(img, 0.99).item())
        ax[0, j].set_title(f"{name}\\n{label}", fontsize=8)
        ax[1, j].imshow(pictureness(models[name](X_test, Y_test))[0], cmap="viridis", vmin=-0.2, vmax=1.2)
        ax[1, j].set_title("output picture-ness", fontsize=8)
for axis in ax.flat:
    axis.axis("off")
plt.tight_layout(); plt.show()"""),
    ("md", r"""What to look for, panel by panel (the figure is computed live; the description is of the
typical outcome):

* **CARAFE** sees only the $16 \times 16$ decoder map: its kernels can only change at the
  resolution of $X$ (the kernel map repeats a $2 \times 2$ pattern), so its output boundary
  keeps the blocks of $X$: the kernel is *coarse*.
* **IndexNet** sees the encoder feature: its index carries the boundary and also the encoder's
  texture in the flat regions. Since it only *scales* the nearest-neighbour copy of $X$, it
  cannot move a point to the other cluster, and its boundary stays blocky.
* **A2U** also works on the encoder feature, but its kernels pass through a sigmoid *before*
  the softmax, so any two weights of a kernel differ by at most a factor $e$: with $K = 3$ no
  weight exceeds $e / (e + 8) \approx 0.25$. Its kernels can never select; the output is a blur
  (and zero padding darkens the image border).
* **FADE** mixes both sources; isolated specks in its kernel map are the encoder noise, and its
  gate copies some of the encoder feature itself into the output.
* **DySample** learns offsets from the decoder feature; in flat regions they change nothing
  (sampling a constant map anywhere gives the constant), and with a short fit it is close to
  bilinear at the boundary.
* **SAPA** compares the encoder point with the decoder points of its window: in a flat window all
  decoder points are equal, so the kernel is an average whatever the noise (Eq. 4 of the
  paper), and at a boundary the weight goes to the points of the cluster the encoder point
  resembles. Its kernel map lights up along the boundary. Isolated bright points can appear
  near the image border: with the official zero padding, window points outside the map have
  logit 0 and value 0, and an encoder point that is *dissimilar* (negative logits) to its
  whole window gives them weight.
* **SAPA-D** can move its nine points; with a short fit they stay close to the $3 \times 3$
  lattice it starts from.

## Complexity: the paper's Table 1, recounted

`sapa.complexity.table1` builds each module at $C = 256$ (with $d = 32$, $K = 5$ for SAPA,
CARAFE's $d = 64$ and A2U's $K = 3$), runs one forward pass under
`torch.utils.flop_counter.FlopCounterMode`, adds the elementwise products the counter does not
see (the weighted sums of the assembly, gates), and divides by the number of low-resolution
points. Counts are **multiply-accumulates**, the unit of the paper's table; normalisation layers
are counted apart (2 per element), because the paper leaves them out.
"""),
    ("code", """rows = table1(C=256, d=32)
display(Markdown(format_table(rows, notes=False)))
for r in rows:
    print(f"{r['module']:>13}: {r['note']}")
t = {r["module"]: r for r in rows}
glue("carafe_k", f"{t['CARAFE']['macs_per_hw'] / 1e3:.1f}K")
glue("sapa_b_k", f"{t['SAPA-B']['macs_per_hw'] / 1e3:.1f}K")
glue("a2u_k", f"{t['A2U']['macs_per_hw'] / 1e3:.1f}K")
glue("hin_m", f"{t['IndexNet-HIN']['macs_per_hw'] / 1e6:.2f}M")
glue("sapa_g_k", f"{t['SAPA-G']['macs_per_hw'] / 1e3:.1f}K")
# the paper's quoted figures (Sec. 4.2), per low-resolution point at C = 256
for name, quoted in [("CARAFE", 99e3), ("IndexNet-HIN", 2e6), ("A2U", 28e3), ("SAPA-B", 70e3)]:
    assert abs(t[name]["macs_per_hw"] / quoted - 1) < 0.06, (name, t[name]["macs_per_hw"])
glue("hin_over_carafe", f"{t['IndexNet-HIN']['macs_per_hw'] / t['CARAFE']['macs_per_hw']:.0f}")
glue("hin_over_sapa_b", f"{t['IndexNet-HIN']['macs_per_hw'] / t['SAPA-B']['macs_per_hw']:.0f}")"""),
    ("md", r"""The counts reproduce the figures the paper quotes at $C = 256$ per low-resolution point:
CARAFE {glue:}`carafe_k` (paper: 99K), IndexNet-HIN {glue:}`hin_m` (2M), A2U {glue:}`a2u_k`
(28K) and SAPA-B {glue:}`sapa_b_k` (70K). The notes list what the formulas leave out:
biases and normalisation parameters in every parameter count, A2U's per-sample filter
generators, and, for SAPA-G, the query projection of the decoder feature ($Cd$ MACs and
$Cd$ parameters: the package projects $x$ at low resolution and then upsamples it, which
gives the same query as projecting the upsampled $x$ at four times the cost), which is why
we count {glue:}`sapa_g_k` for SAPA-G.

SAPA's cost is dominated by the assembly $4K^2C$, shared with CARAFE and A2U; its kernel
generation ($5Cd + 4K^2d$) is cheaper than CARAFE's ($Cd + 36K^2d$), and IndexNet's strided
convolutions on the encoder cost {glue:}`hin_over_carafe` times as much as CARAFE and
{glue:}`hin_over_sapa_b` times as much as SAPA-B.

## Summary

* Every dynamic upsampler is kernel generation (Eq. {eq}`eq-kernel-generation`) plus feature
  assembly (Eq. {eq}`eq-feature-assembly`); they differ in where the kernel comes from.
* Decoder-only kernels (CARAFE) know the semantics but not the boundary: coarse. Encoder-only
  kernels (IndexNet, A2U) know the boundary but copy the encoder's noise. FADE combines the two
  sources with a gate; DySample replaces the kernel with learned sampling positions.
* SAPA computes the kernel from the **similarity** between each encoder point and the decoder
  points of its window, so in flat windows the kernel averages regardless of the encoder and at
  boundaries it affiliates the point to the cluster it resembles {cite:p}`sapa2022`.
* Counted in multiply-accumulates, SAPA-B costs about as much as CARAFE with a fraction of the
  parameters, and far less than IndexNet; the paper's formulas match the counts up to biases,
  normalisation layers and (for SAPA-G) one omitted projection.
"""),
]


if __name__ == "__main__":
    write(NAME, CELLS)
