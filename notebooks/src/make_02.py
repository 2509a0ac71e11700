"""Generate notebooks/02_local_mutual_similarity.ipynb (chapter 2), without outputs.

Run: python notebooks/src/make_02.py [output_dir]   (default: notebooks/)
"""
from __future__ import annotations

from _nbgen import COLAB_CELL, GLUE_CELL, write

NAME = "02_local_mutual_similarity.ipynb"

CELLS = [
    ("md", r"""# Local mutual similarity

:::{admonition} Learning goals
:class: tip

After this chapter you can

* write SAPA's kernel (Eq. 3 of {cite:t}`sapa2022`) and derive from it that the kernel is an
  exact average $1/K^2$ in a smooth window, whatever the encoder point (Eq. 4);
* check both properties numerically with the package's operator;
* say what each choice of the normalisation $h$ does, including its failure modes (all-zero
  kernels, the $\varepsilon$ of the denominator, padding at the map border);
* tell apart the inner-product, bilinear and gated similarities, and explain why SAPA applies
  LayerNorm to encoder and decoder features before comparing them.
:::
"""),
    ("code", COLAB_CELL),
    ("code", GLUE_CELL + """

import matplotlib.pyplot as plt
import torch
import torch.nn as nn

import sapa
from sapa.module import channel_layer_norm
from sapa.ops import NORM_EPS, normalize_logits

torch.manual_seed(0)
print("sapa", sapa.__version__, "| torch", torch.__version__, "| profile", sapa.get_profile())"""),
    ("md", r"""## From point affiliation to a kernel formula

Chapter 1 ended with a wish: weight every point of the low-resolution window by how similar it is
to the new high-resolution point. Let us write it down.

Let $X$ be the decoder feature ($H \times W$ points with $C$ channels) and $Y$ the encoder
feature ($H' \times W'$ points). A new point $l'$ has the encoder vector $y_{l'}$, and its
window is the set of decoder vectors $x_{l+p}$ with offsets $p \in \mathcal I = \{-r, \dots,
r\}^2$, $r = \lfloor K/2 \rfloor$, around the parent position $l$. Upsampling assembles the
window with a kernel (the paper's Eq. 2):

$$
X'_{l'} = \sum_{p \in \mathcal I} W_{l',p} \, x_{l+p}.
$$

To turn similarities into weights, pick a similarity function $\mathrm{sim}: \mathbb R^d \times
\mathbb R^d \to \mathbb R$ and a function $h: \mathbb R \to \mathbb R$, and normalise over the
window:

$$
W_{l',p} = \frac{h\big(\mathrm{sim}(x_{l+p}, y_{l'})\big)}
               {\sum_{q \in \mathcal I} h\big(\mathrm{sim}(x_{l+q}, y_{l'})\big)}.
$$

This is the paper's Eq. 3. With $h = \exp$ it is a softmax over the $K^2$ similarities, the
default of SAPA. Nothing more is needed: no network predicts the kernel, the kernel *is* the
normalised similarity between one encoder point and its local decoder neighbourhood, hence the
name **local mutual similarity**.

### Smooth windows: an exact average

Assume, as the paper does, that points of one semantic cluster share one feature vector. In a
**smooth** window all $K^2$ decoder points belong to the same cluster, say $x_{l+p} = b$ for
every $p$. Then every numerator of Eq. 3 is the same number $h(\mathrm{sim}(b, y_{l'}))$ and

$$
W_{l',p} = \frac{h\big(\mathrm{sim}(b, y_{l'})\big)}{K^2 \, h\big(\mathrm{sim}(b, y_{l'})\big)}
         = \frac{1}{K^2}.
$$

This is Eq. 4. The encoder vector $y_{l'}$ cancels: whatever the encoder says, even pure
noise, the kernel is a box filter and the new point gets the value $b$ of its cluster. Two
things made the cancellation possible: the vectors compared with $y_{l'}$ all come from the
*decoder's* window, and the weights have the form $h(s_p) / \sum_q h(s_q)$. The derivation also
silently divides by $h(\mathrm{sim}(b, y_{l'}))$, which must therefore not be zero.

### Detail windows: a selector

In a **detail** window two clusters meet: some offsets $s$ hold the wall vector $a$, others
$t$ the picture vector $b$. If the encoder point $y_{m'}$ is more similar to $a$ than to $b$,
then $\mathrm{sim}(a, y_{m'}) > \mathrm{sim}(b, y_{m'})$, and for an increasing $h$ every wall
weight $W_{m',s}$ exceeds every picture weight $W_{m',t}$; with $h = \exp$ the ratio grows
exponentially with the gap. The new point is then assembled mostly from wall points: it is
affiliated to the wall. Here, and only here, the encoder vector matters.
"""),
    ("md", r"""## Reading kernels out of the operator

`sapa.sapa_upsample(query, key, value, kernel_size)` implements Eq. 2 and 3: `query` holds the
encoder vectors $y_{l'}$, `key` the decoder vectors $x_l$ that enter the similarity, and `value`
the decoder features that are assembled. Since the output is linear in `value`, the kernel of
every output point can be read off with impulse values, as in chapter 1: make `value` a stack of
$HW$ channels, channel $c$ being $1$ at low-resolution position $c$ and $0$ elsewhere. Output
channel $c$ at $l'$ is then $W_{l',c}$.
"""),
    ("code", """def kernels(query, key, kernel_size=5, **options):
    \"\"\"Weights (B, H*W, H', W') that each output point gives to each low-res position.\"\"\"
    B, _, H, W = key.shape
    eye = torch.eye(H * W, dtype=key.dtype).view(1, H * W, H, W).expand(B, -1, -1, -1)
    return sapa.sapa_upsample(query, key, eye, kernel_size, backend="reference", **options)


K = 5
C = 16
H = W = 5                      # one 5 x 5 low-res map: the window of the centre (2, 2)
CENTRE_POINTS = [(4, 4), (4, 5), (5, 4), (5, 5)]   # the four new points whose parent is (2, 2)"""),
    ("md", r"""### Check 1: the smooth window

We fill the whole decoder map with one random vector $b$ and draw many random encoder maps,
large enough that their similarities with $b$ span a wide range. For the four new points whose
parent is the centre, the window lies inside the map, and Eq. 4 says that every kernel is
exactly $1/K^2$.
"""),
    ("code", """n_encoders = 64
b_smooth = torch.randn(C, dtype=torch.float64)
x_smooth = b_smooth.view(1, C, 1, 1).expand(n_encoders, C, H, W).contiguous()
y_random = 3 * torch.randn(n_encoders, C, 2 * H, 2 * W, dtype=torch.float64)

w = kernels(y_random, x_smooth, K)                        # softmax, the default
w_centre = torch.stack([w[:, :, i, j] for i, j in CENTRE_POINTS], dim=1)   # (n, 4, 25)
torch.testing.assert_close(w_centre, torch.full_like(w_centre, 1 / K**2))

sims = torch.einsum("c,nchw->nhw", b_smooth, y_random)
glue("n_encoders", n_encoders, display=False)
glue("sim_min", round(sims.min().item(), 1), display=False)
glue("sim_max", round(sims.max().item(), 1), display=False)
print(f"{n_encoders} random encoder maps, similarities from {sims.min():.1f} to {sims.max():.1f}: "
      f"every centre kernel equals 1/{K * K}")

# the output is b itself: the encoder noise is filtered out completely
out = sapa.sapa_upsample(y_random, x_smooth, x_smooth, K)
out_centre = out[:, :, 4:6, 4:6]
torch.testing.assert_close(out_centre, b_smooth.view(1, C, 1, 1).expand_as(out_centre))"""),
    ("md", r"""Over {glue:}`n_encoders` random encoder maps, with similarities ranging from
{glue:}`sim_min` to {glue:}`sim_max`, the softmax kernel is $1/K^2$ up to rounding, and the
upsampled value is $b$: the encoder's variation is filtered out entirely.
"""),
    ("md", r"""### Check 2: the detail window

Now the left two columns of the window hold the wall vector $a$ and the right three the picture
vector $b$. Real decoder features are never perfectly constant, so we add a little noise to each
decoder point. The encoder point $m'$ is a noisy wall vector, $n'$ a noisy picture vector.
"""),
    ("code", """torch.manual_seed(2)                # every section draws from its own seed
a = torch.randn(C)
b = torch.randn(C) + 1.0            # the picture is brighter on average than the wall
x_detail = torch.empty(1, C, H, W)
x_detail[0, :, :, :2] = a.view(C, 1, 1)
x_detail[0, :, :, 2:] = b.view(C, 1, 1)
x_detail = x_detail + 0.2 * torch.randn_like(x_detail)
wall = torch.zeros(H, W, dtype=torch.bool)
wall[:, :2] = True

y_detail = torch.zeros(1, C, 2 * H, 2 * W)
y_detail[0, :, 4, 4] = a + 0.5 * torch.randn(C)     # m': should join the wall
y_detail[0, :, 4, 5] = b + 0.5 * torch.randn(C)     # n': should join the picture


def masses(query, key, **options):
    \"\"\"(weight on the wall for m', weight on the picture for n', the two 5 x 5 kernels).\"\"\"
    w = kernels(query, key, K, **options)
    km, kn = w[0, :, 4, 4].view(H, W), w[0, :, 4, 5].view(H, W)
    return km[wall].sum().item(), kn[~wall].sum().item(), km, kn


m_wall, n_pic, km, kn = masses(y_detail, x_detail)
glue("detail_m_wall", m_wall, display=False)
glue("detail_n_pic", n_pic, display=False)
assert m_wall > 0.9 and n_pic > 0.9

fig, axes = plt.subplots(1, 2, figsize=(6.5, 3))
for ax, k, title in [(axes[0], km, "kernel of m' (wall point)"), (axes[1], kn, "kernel of n' (picture point)")]:
    im = ax.imshow(k, cmap="magma", vmin=0)
    ax.axvline(1.5, color="c", lw=2)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([]); ax.set_yticks([])
    plt.colorbar(im, ax=ax, fraction=0.046)
plt.suptitle("detail window: wall on the left of the cyan line, picture on the right", fontsize=10)
plt.tight_layout()
plt.show()"""),
    ("md", r"""The kernel of $m'$ puts {glue:text}`detail_m_wall:.1%` of its weight on the wall points and
the kernel of $n'$ {glue:text}`detail_n_pic:.1%` on the picture points: each new point is
affiliated to its own cluster, and inside that cluster the weight is spread out, averaging the
decoder's noise away.
"""),
    ("md", r"""## The normalisation function $h$

Eq. 3 leaves $h$ free. The package offers $h = \exp$ (`normalization="softmax"`, SAPA's
default), $\mathrm{ReLU}$, $\mathrm{sigmoid}$ and $\mathrm{softplus}$; for the last three the
weights are $h(s_p) / (\sum_q h(s_q) + \varepsilon)$ with $\varepsilon$ =
`sapa.NORM_EPS` to avoid a division by zero. `"none"` uses the raw similarities as weights.

We repeat the smooth-window check with each of them and record how far the centre kernels are
from $1/K^2$, and how often the kernel collapses (its weights sum to less than one half).
"""),
    ("code", """rows = []
for norm in ["softmax", "relu", "sigmoid", "softplus", "none"]:
    w = kernels(y_random.float(), x_smooth.float(), K, normalization=norm)
    wc = torch.stack([w[:, :, i, j] for i, j in CENTRE_POINTS], dim=1)
    sums = wc.sum(-1)
    rows.append((norm, (wc - 1 / K**2).abs().max().item(), (sums < 0.5).float().mean().item(),
                 (wc < 0).any(-1).float().mean().item()))
print(f"{'h':9s} {'max |w - 1/K^2|':>16s} {'collapsed':>10s} {'negative w':>11s}")
for norm, dev, collapsed, negative in rows:
    print(f"{norm:9s} {dev:16.3g} {collapsed:10.1%} {negative:11.1%}")
    glue(f"h_{norm}_collapsed", collapsed, display=False)
    glue(f"h_{norm}_dev", dev, display=False)
glue("norm_eps", NORM_EPS, display=False)"""),
    ("md", r"""What the table says:

* **softmax** ($h = \exp$) never fails: $e^s > 0$ for every $s$, and the softmax subtracts the
  largest logit before exponentiating, so the smooth kernel is $1/K^2$ for every encoder point.
* **ReLU** gives $h(s) = 0$ for every negative similarity. In a smooth window all $K^2$
  similarities are equal, so when that common value is negative the whole kernel is zero
  ({glue:text}`h_relu_collapsed:.1%` of the centre kernels here): the new point gets the value
  $0$, which belongs to no cluster. Without the $\varepsilon$ =
  {glue:}`norm_eps` it would be $0/0$.
* **sigmoid** and **softplus** are positive in theory, but for strongly negative similarities
  $h(s)$ underflows below $\varepsilon$, and $h/(K^2 h + \varepsilon)$ is then far below $1/K^2$:
  {glue:text}`h_sigmoid_collapsed:.1%` (sigmoid) and {glue:text}`h_softplus_collapsed:.1%`
  (softplus) of the kernels collapse. With moderate similarities they behave like the softmax;
  the $\varepsilon$ alone moves the weights by about $\varepsilon / h$.
* **none** is not a normalisation at all: the weights are the similarities themselves, of any
  sign and any sum, so the output is not a convex combination of the window (it leaves the
  range of the decoder values and can flip their sign).

The same kernels in the detail window:
"""),
    ("code", """fig, axes = plt.subplots(2, 5, figsize=(11, 4.6))
for col, norm in enumerate(["softmax", "relu", "sigmoid", "softplus", "none"]):
    m_wall, n_pic, km, kn = masses(y_detail, x_detail, normalization=norm)
    for row, (k, who, mass) in enumerate([(km, "m'", m_wall), (kn, "n'", n_pic)]):
        ax = axes[row, col]
        lim = k.abs().max().item()
        ax.imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.axvline(1.5, color="k", lw=1.5)
        ax.set_title(f"{norm}, {who}: {mass:.2f}", fontsize=9)
        ax.set_xticks([]); ax.set_yticks([])
plt.suptitle("detail-window kernels (red > 0 > blue); title: weight on the right cluster", fontsize=10)
plt.tight_layout()
plt.show()"""),
    ("md", r"""### Padding at the border of the map

A window near the border reaches outside the low-resolution map. The official SAPA code treats
the missing points as zero vectors: their similarity is $0$, they still count in the softmax,
and their value is $0$ (`padding="zeros"`, the package's default). The package also offers
`padding="ignore"`, which leaves them out of the normalisation. In a smooth window the
difference is visible at once: with zeros padding the weights on real points sum to less than one,
so the upsampled value shrinks towards zero near the border.
"""),
    ("code", """# an encoder map whose similarity with b is 1 everywhere
y_one = (b_smooth / b_smooth.dot(b_smooth)).view(1, C, 1, 1).expand(1, C, 2 * H, 2 * W).contiguous()
x_one = x_smooth[:1]
corner = {}
for padding in ["zeros", "ignore"]:
    w = kernels(y_one, x_one, K, padding=padding)
    corner[padding] = w[0, :, 0, 0].sum().item()      # new point (0, 0): parent (0, 0), a corner
    print(f"padding={padding!r:9s} weight on real points at the corner: {corner[padding]:.4f}")
glue("corner_zeros", corner["zeros"], display=False)
glue("corner_ignore", corner["ignore"], display=False)
glue("corner_sim", round(torch.dot(y_one[0, :, 0, 0], b_smooth).item(), 2), display=False)"""),
    ("md", r"""At the corner only $3 \times 3$ of the $5 \times 5$ window lies in the map. With a similarity
of {glue:}`corner_sim` between the encoder point and $b$, zeros padding keeps
{glue:text}`corner_zeros:.3f` of the weight on real points, while `ignore` keeps
{glue:text}`corner_ignore:.3f`. The package defaults to the official behaviour so that trained
SAPA weights transfer; chapter 3 compares the two in code.
"""),
    ("md", r"""## Similarity functions

The paper studies three similarity functions between a decoder vector $x$ and an encoder vector
$y$:

* **inner product**, $\mathrm{sim}(x, y) = x^\top y$: no parameters, but $x$ and $y$ must have
  the same number of channels (SAPA-I);
* **low-rank bilinear**, $\mathrm{sim}(x, y) = x^\top P_x^\top P_y y = (P_x x)^\top (P_y y)$
  with $P_x, P_y \in \mathbb R^{d \times C}$, $d < C$: an inner product between learned
  $d$-dimensional embeddings, the *key* $P_x x$ and the *query* $P_y y$ (SAPA-B);
* **gated bilinear**,
  $\mathrm{sim}(x, y) = g \, x^\top P_x^\top P_{xy} y + (1 - g) \, x^\top P_x^\top P_{xx} \hat x$,
  where $\hat x$ is the decoder feature nearest-upsampled to the position of $y$ and
  $g \in (0, 1)$ a gate predicted from the decoder (SAPA-G).

The gated form factorises as $(P_x x)^\top \big(g P_{xy} y + (1 - g) P_{xx} \hat x\big)$: it is
still an inner product with the same key, but the query mixes the encoder point with the
decoder's own upsampled point. Where $g \to 0$ the new point is compared with its own parent,
which is how the gate silences a noisy encoder. We verify the factorisation numerically, and
Eq. 4 for all three: every one of them is of the form of Eq. 3, so a smooth window still gets
the exact average.
"""),
    ("code", """d = 8
Px, Py, Pxx = (torch.randn(d, C, dtype=torch.float64) for _ in range(3))
x_vec, y_vec, xhat = (torch.randn(C, dtype=torch.float64) for _ in range(3))
g = 0.3
explicit = g * x_vec @ Px.T @ Py @ y_vec + (1 - g) * x_vec @ Px.T @ Pxx @ xhat
factorised = (Px @ x_vec) @ (g * Py @ y_vec + (1 - g) * Pxx @ xhat)
torch.testing.assert_close(explicit, factorised)

# Eq. 4 for every variant of the SAPA module (random initial weights, random encoder maps)
for variant in ["I", "B", "P", "G"]:
    module = sapa.SAPA(C, variant=variant, kernel_size=K).double()
    with torch.no_grad():
        for p in module.parameters():          # larger weights than at init: sharper kernels
            p.normal_(0, 0.5)
        q, k = module.query_key(x_smooth[:16], y_random[:16])
        w = kernels(q, k, K)
    wc = torch.stack([w[:, :, i, j] for i, j in CENTRE_POINTS], dim=1)
    torch.testing.assert_close(wc, torch.full_like(wc, 1 / K**2))
print("gated similarity factorises; every variant gives 1/K^2 in a smooth window")"""),
    ("md", r"""Now the gate at work. The encoder point $m'$ of the detail window is made *noisy*: it
looks more like the picture than like the wall, although it belongs to the wall. We take
$P_x = P_{xy} = P_{xx} = I$ (so $d = C$) to see the effect of $g$ alone, and the parent of $m'$
is a wall point.
"""),
    ("code", """x_par = x_detail[0, :, 2, 1]                       # a wall point, used as the parent of m'
y_noisy = 0.4 * a + 0.6 * b                       # m' is on the wall, but its encoder vector is noisy
keys = x_detail[0].reshape(C, -1).T                # (25, C)
gate_rows = []
fig, axes = plt.subplots(1, 3, figsize=(8.5, 2.9))
for ax, g in zip(axes, [1.0, 0.5, 0.0]):
    query = g * y_noisy + (1 - g) * x_par
    w = normalize_logits(keys @ query, None, "softmax", dim=0).view(H, W)
    gate_rows.append(w[wall].sum().item())
    ax.imshow(w, cmap="magma", vmin=0)
    ax.axvline(1.5, color="c", lw=2)
    ax.set_title(f"g = {g}: wall weight {w[wall].sum():.2f}", fontsize=9)
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()
glue("gate1_wall", gate_rows[0], display=False)
glue("gate0_wall", gate_rows[2], display=False)"""),
    ("md", r"""With $g = 1$ the noisy encoder point wins and only {glue:text}`gate1_wall:.1%` of the weight
goes to the wall; with $g = 0$ the query is the decoder's own wall point and
{glue:text}`gate0_wall:.1%` does. A learned gate can choose, point by point, how much to trust
the encoder.
"""),
    ("md", r"""## Why LayerNorm

Encoder and decoder features come from different parts of a network, and nothing forces them to
have the same scale or offset. Their inner products then mean little. Two things go wrong when
the encoder features are, for instance, ten times larger and shifted by a constant in every
channel, $\tilde y = 10\, y + 20$:

* the **scale** multiplies every similarity by ten, so the softmax saturates towards a one-hot
  kernel that picks a single decoder point instead of averaging the cluster;
* the **offset** adds $20 \sum_c x_c$ to the similarity with $x$, a term that depends on the
  decoder point only: every encoder point now prefers the decoder points with the largest
  channel sum, whatever it looks like itself.

SAPA applies LayerNorm over the channels of every point, to both features, before computing
similarities. LayerNorm removes the per-point mean and divides by the per-point standard
deviation, so it is blind to exactly such scalings and shifts:
$\mathrm{LN}(\alpha y + \beta \mathbf 1) = \mathrm{LN}(y)$ for $\alpha > 0$.
"""),
    ("code", """y_shifted = 10 * y_detail + 20
ln_y, ln_x = nn.LayerNorm(C), nn.LayerNorm(C)       # weight 1, bias 0 as in SAPA's init

cases = {
    "raw features": (y_detail, x_detail),
    "encoder x10 + 20": (y_shifted, x_detail),
    "encoder x10 + 20, LayerNorm": (channel_layer_norm(y_shifted, ln_y), channel_layer_norm(x_detail, ln_x)),
    "raw, LayerNorm": (channel_layer_norm(y_detail, ln_y), channel_layer_norm(x_detail, ln_x)),
}
fig, axes = plt.subplots(2, 4, figsize=(11, 5))
stats = {}
with torch.no_grad():
    for col, (name, (q, k)) in enumerate(cases.items()):
        m_wall, n_pic, km, kn = masses(q, k)
        stats[name] = (m_wall, n_pic, km.max().item())
        for row, (kk, who, mass) in enumerate([(km, "m'", m_wall), (kn, "n'", n_pic)]):
            ax = axes[row, col]
            ax.imshow(kk, cmap="magma", vmin=0, vmax=1)
            ax.axvline(1.5, color="c", lw=2)
            ax.set_title(f"{name}\\n{who}: right cluster {mass:.2f}, max {kk.max():.2f}", fontsize=8)
            ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()
for name, (m_wall, n_pic, wmax) in stats.items():
    print(f"{name:30s} m' on wall {m_wall:.3f}   n' on picture {n_pic:.3f}   largest weight of m' {wmax:.3f}")

# LayerNorm makes the kernels of the shifted and of the raw encoder identical
with torch.no_grad():
    k_shift = kernels(*cases["encoder x10 + 20, LayerNorm"])
    k_raw = kernels(*cases["raw, LayerNorm"])
torch.testing.assert_close(k_shift, k_raw)
assert stats["encoder x10 + 20"][0] < 0.5      # m' is pulled away from its own cluster
glue("raw_max", stats["raw features"][2], display=False)
glue("shift_m_wall", stats["encoder x10 + 20"][0], display=False)
glue("shift_n_pic", stats["encoder x10 + 20"][1], display=False)
glue("ln_m_wall", stats["encoder x10 + 20, LayerNorm"][0], display=False)
glue("ln_n_pic", stats["encoder x10 + 20, LayerNorm"][1], display=False)"""),
    ("code", """# the scale alone: one decoder point takes (almost) all the weight
with torch.no_grad():
    _, _, km_1, _ = masses(y_detail, x_detail)
    _, _, km_10, _ = masses(10 * y_detail, x_detail)
glue("scale1_max", km_1.max().item(), display=False)
glue("scale10_max", km_10.max().item(), display=False)
print(f"largest weight of m': raw {km_1.max():.3f}, encoder x10 {km_10.max():.3f}")"""),
    ("md", r"""Without normalisation, the shifted encoder pulls $m'$ off its cluster: only
{glue:text}`shift_m_wall:.1%` of its weight stays on the wall, while $n'$ keeps
{glue:text}`shift_n_pic:.1%` on the picture. Both new points now follow the brighter cluster,
whatever their encoder vector says. The scale alone saturates the softmax: the largest weight of
$m'$ grows from {glue:text}`scale1_max:.2f` to {glue:text}`scale10_max:.2f`, so the kernel
copies one noisy decoder point instead of averaging its cluster. With LayerNorm on both inputs,
the kernels of the shifted encoder are *identical* to those of the original one (checked with
`assert_close` above): {glue:text}`ln_m_wall:.1%` on the wall for $m'$ and
{glue:text}`ln_n_pic:.1%` on the picture for $n'$. The paper reports that without this
normalisation the training loss does not decrease at all.
"""),
    ("md", r"""## Summary

* SAPA's kernel is a normalised local mutual similarity (Eq. 3): the weight of a decoder point
  is $h$ of its similarity to the encoder point, divided by the sum over the $K \times K$ window.
* In a **smooth** window the kernel is exactly $1/K^2$ for every encoder point (Eq. 4,
  verified with `assert_close` over {glue:}`n_encoders` random encoder maps), so encoder noise
  cannot leak into uniform regions. In a **detail** window the kernel selects the cluster the
  encoder point resembles.
* $h = \exp$ (softmax) is the safe choice: ReLU yields all-zero kernels when the similarities
  are negative, sigmoid and softplus collapse when $h$ underflows below $\varepsilon$, and `none`
  is not a convex combination. At the map border, official zeros padding lets outside points
  take weight; `padding="ignore"` does not.
* Inner-product, bilinear and gated similarities are all inner products between a key and a
  query; the gate mixes the encoder point with the decoder's own point to silence encoder noise.
* LayerNorm on both inputs makes the kernels invariant to the scale and offset of each feature;
  without it the softmax saturates and an offset can override the encoder point.
"""),
]


if __name__ == "__main__":
    write(NAME, CELLS)
