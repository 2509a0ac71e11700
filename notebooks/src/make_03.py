"""Generate notebooks/03_building_sapa.ipynb (chapter 3), without outputs.

Run: python notebooks/src/make_03.py [output_dir]   (default: notebooks/)
"""
from __future__ import annotations

from _nbgen import COLAB_CELL, GLUE_CELL, write

NAME = "03_building_sapa.ipynb"

CELLS = [
    ("md", r"""# Building SAPA step by step

:::{admonition} Learning goals
:class: tip

After this chapter you can

* implement the SAPA operator (Eq. 2 and 3 of {cite:t}`sapa2022`) with explicit loops, then
  vectorise it with `unfold` and `einsum`;
* check every step against the package's `sapa.sapa_upsample`, for both its `"reference"` and
  its `"torch"` backend, values and gradients;
* rebuild the forward pass of the `sapa.SAPA` module (LayerNorm, projections, plain addition,
  gate) from the module's own parameters, for every variant;
* handle skip connections of odd size ($2H + 1$) and explain the official padding semantics.
:::
"""),
    ("code", COLAB_CELL),
    ("code", GLUE_CELL + """

import itertools
import math

import torch
import torch.nn.functional as F

import sapa

torch.manual_seed(0)
print("sapa", sapa.__version__, "| torch", torch.__version__, "| profile", sapa.get_profile())"""),
    ("md", r"""## Step 1: explicit loops

We start from the definition, one output point at a time. The inputs are

* `query` $(B, d, H', W')$: the encoder embedding, one vector $q_{l'}$ per new point;
* `key` $(B, d, H, W)$: the decoder embedding, one vector $k_l$ per low-resolution point;
* `value` $(B, C, H, W)$: the decoder feature that is assembled (the raw $X$ in SAPA).

For the new point $l' = (i, j)$, the window centre is $l = (\lfloor iH/H' \rfloor, \lfloor
jW/W' \rfloor)$, which is $(\lfloor i/2 \rfloor, \lfloor j/2 \rfloor)$ when $H' = 2H$. For every
offset $p$ of the $K \times K$ window the logit is the plain dot product
$s_p = q_{l'}^\top k_{l+p}$ (no $1/\sqrt d$ scaling), the weights are the softmax of the $K^2$
logits, and the output is $\sum_p w_p v_{l+p}$.

At the border, the official code pads the *key* and the *value* with zeros: a position outside
the map has logit exactly $0$, takes part in the softmax, and contributes the value $0$
(`padding="zeros"`). The alternative `padding="ignore"` drops such positions from the softmax.
"""),
    ("code", """def sapa_loops(query, key, value, K=5, padding="zeros"):
    \"\"\"SAPA with Python loops: the definition, one output point and one offset at a time.\"\"\"
    B, d, Hq, Wq = query.shape
    C, H, W = value.shape[1:]
    R = K // 2
    out = torch.zeros(B, C, Hq, Wq, dtype=value.dtype)
    for b in range(B):
        for i in range(Hq):
            for j in range(Wq):
                ci, cj = (i * H) // Hq, (j * W) // Wq          # window centre on the low-res map
                logits, values = [], []
                for u in range(-R, R + 1):
                    for v in range(-R, R + 1):
                        r, c = ci + u, cj + v
                        if 0 <= r < H and 0 <= c < W:
                            logits.append(query[b, :, i, j] @ key[b, :, r, c])
                            values.append(value[b, :, r, c])
                        elif padding == "zeros":                # official: zero key and zero value
                            logits.append(torch.zeros((), dtype=query.dtype))
                            values.append(torch.zeros(C, dtype=value.dtype))
                weights = torch.softmax(torch.stack(logits), dim=0)
                out[b, :, i, j] = (weights[:, None] * torch.stack(values)).sum(0)
    return out


def check_against_package(fn, query, key, value, K, padding="zeros"):
    \"\"\"assert_close of fn(...) with both pure-PyTorch backends of sapa.sapa_upsample.\"\"\"
    mine = fn(query, key, value, K, padding=padding)
    for backend in ["reference", "torch"]:
        theirs = sapa.sapa_upsample(query, key, value, K, padding=padding, backend=backend)
        torch.testing.assert_close(mine, theirs)
    return mine


tiny = dict(B=1, d=4, C=3, H=3, W=4)
q = torch.randn(tiny["B"], tiny["d"], 2 * tiny["H"], 2 * tiny["W"], dtype=torch.float64)
k = torch.randn(tiny["B"], tiny["d"], tiny["H"], tiny["W"], dtype=torch.float64)
v = torch.randn(tiny["B"], tiny["C"], tiny["H"], tiny["W"], dtype=torch.float64)
for padding in ["zeros", "ignore"]:
    check_against_package(sapa_loops, q, k, v, K=3, padding=padding)
print("loops == sapa_upsample (reference and torch backends), both paddings")"""),
    ("md", r"""## Step 2: `unfold` and `einsum`

The loops visit each window once per output point. Two observations vectorise them:

1. `F.unfold(key, K, padding=K // 2)` lists, for *every* low-resolution position, the $K^2$
   vectors of its window, with zeros outside the map: exactly the official padding. Viewed as
   $(B, d, K^2, H, W)$, entry $[\dots, p, r, c]$ is $k_{(r, c) + p}$.
2. The window of the new point $(i, j)$ is the window of its centre $(\lfloor iH/H' \rfloor,
   \lfloor jW/W' \rfloor)$, so indexing the unfolded tensor with the centre of every row and of
   every column gives the windows of all new points at once: $(B, d, K^2, H', W')$.

The logits are then one `einsum` over $d$, the softmax runs over the $K^2$ axis, and a second
`einsum` over $K^2$ assembles the values. For `padding="ignore"` we unfold a map of ones to know
which positions are real and set the other logits to $-\infty$ before the softmax.
"""),
    ("code", """def centres(n_out, n_in):
    \"\"\"Window centre on the low-res axis for each of n_out output indices: floor(i * n_in / n_out).\"\"\"
    return torch.arange(n_out) * n_in // n_out


def gather_windows(t, K, rows, cols):
    \"\"\"(B, c, H, W) -> (B, c, K*K, H', W'): the zero-padded K x K window of every output point.\"\"\"
    B, c, H, W = t.shape
    unfolded = F.unfold(t, K, padding=K // 2).view(B, c, K * K, H, W)
    return unfolded[:, :, :, rows][:, :, :, :, cols]


def sapa_unfold(query, key, value, K=5, padding="zeros"):
    \"\"\"SAPA with unfold + einsum: all output points at once.\"\"\"
    Hq, Wq = query.shape[-2:]
    H, W = key.shape[-2:]
    rows, cols = centres(Hq, H), centres(Wq, W)
    k_win = gather_windows(key, K, rows, cols)                   # (B, d, K*K, H', W')
    v_win = gather_windows(value, K, rows, cols)                 # (B, C, K*K, H', W')
    logits = torch.einsum("bdij,bdpij->bpij", query, k_win)       # (B, K*K, H', W')
    if padding == "ignore":
        ones = torch.ones(1, 1, H, W, dtype=key.dtype)
        inside = gather_windows(ones, K, rows, cols)[:, 0] > 0    # (1, K*K, H', W')
        logits = logits.masked_fill(~inside, float("-inf"))
    weights = torch.softmax(logits, dim=1)
    return torch.einsum("bpij,bcpij->bcij", weights, v_win)


# same answers as the loops on the tiny example ...
for padding in ["zeros", "ignore"]:
    torch.testing.assert_close(sapa_unfold(q, k, v, 3, padding), sapa_loops(q, k, v, 3, padding))
# ... and as the package on a larger one, for several window sizes
B, d, C, H, W = 2, 8, 6, 9, 11
q = torch.randn(B, d, 2 * H, 2 * W)
k = torch.randn(B, d, H, W)
v = torch.randn(B, C, H, W)
for K, padding in itertools.product([1, 3, 5, 7], ["zeros", "ignore"]):
    check_against_package(sapa_unfold, q, k, v, K, padding=padding)
print("unfold + einsum == loops == sapa_upsample for K in 1, 3, 5, 7")"""),
    ("md", r"""### Gradients

SAPA is trained end to end, so the gradients matter as much as the values. `sapa_unfold` is made
of differentiable PyTorch operations; the package's `"torch"` backend instead uses a hand-written
backward that recomputes the weights chunk by chunk (to save memory). Autograd through our
version is an independent oracle for it:
"""),
    ("code", """def grads(fn):
    qq, kk, vv = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = fn(qq, kk, vv)
    g_out = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)   # any fixed upstream gradient
    return torch.autograd.grad(out, (qq, kk, vv), g_out)


for padding in ["zeros", "ignore"]:
    ours = grads(lambda a, b_, c: sapa_unfold(a, b_, c, 5, padding))
    package = grads(lambda a, b_, c: sapa.sapa_upsample(a, b_, c, 5, padding=padding, backend="torch"))
    for g1, g2 in zip(ours, package):
        torch.testing.assert_close(g1, g2)
print("gradients w.r.t. query, key and value agree")"""),
    ("md", r"""## Step 3: the package's operator

`sapa.sapa_upsample(query, key, value, kernel_size=5, normalization="softmax",
padding="zeros", backend="auto")` is what the module calls. Its `"reference"` backend is the
`unfold` + `einsum` formulation above; the `"torch"` backend gives the same numbers without ever
materialising the $(B, C, K^2, H', W')$ tensor of gathered values, which is $K^2 = 25$ times the
size of the output. On a GPU, `"auto"` picks a fused Triton kernel when one is available; later
chapters cover it. The sizes at which `unfold` becomes a problem:
"""),
    ("code", """def gathered_bytes(B, C, Hq, Wq, K=5, bytes_per=4):
    return B * C * K * K * Hq * Wq * bytes_per

for (B_, C_, Hq_, Wq_) in [(2, 64, 128, 128), (8, 256, 128, 128), (8, 64, 512, 512)]:
    print(f"B={B_} C={C_} {Hq_}x{Wq_}: output {B_ * C_ * Hq_ * Wq_ * 4 / 2**20:8.1f} MiB, "
          f"gathered values {gathered_bytes(B_, C_, Hq_, Wq_) / 2**20:9.1f} MiB")"""),
    ("md", r"""## Step 4: the module

The operator needs a query and a key; the `SAPA` module makes them from the decoder feature $x$
$(B, C, H, W)$ and the encoder feature $y$ $(B, C_y, H', W')$ (paper Sec. 4.2):

1. **LayerNorm** over the channels of every point, separately for $x$ (`norm_x`) and $y$
   (`norm_y`), with a learned scale and shift;
2. a **projection** to $d$ channels (32 by default): key $= P_x\,\mathrm{LN}(x)$ (`k_x`), and a
   query that depends on the variant:
   * `"I"` (inner product): no projection, query $= \mathrm{LN}(y)$ and key $= \mathrm{LN}(x)$;
   * `"B"` (bilinear): query $= P_y\,\mathrm{LN}(y)$ (`q_y`);
   * `"P"` (plain addition): query $= P\,[\mathrm{LN}(y); \hat x]$ (`q_yx`), where $\hat x$ is
     $x$ nearest-upsampled to $H' \times W'$; a linear map of a concatenation is the sum of two
     linear maps, hence the name;
   * `"G"` (gated): $g = \sigma(P_g\,\mathrm{LN}(x))$ (`gate`), nearest-upsampled, and query
     $= g\, P_y\,\mathrm{LN}(y) + (1 - g)\, P_{xx}\,\hat x$ (`q_y`, `q_x`);
3. `sapa_upsample(query, key, x)`: the value is the **raw** $x$, neither normalised nor
   projected.

Every linear map acts on each point separately (a $1 \times 1$ convolution). We now rebuild the
whole forward pass from the module's parameters, with our own `sapa_unfold` and our own nearest
upsampling, and compare with `module(x, y)`. The parameters are first randomised so that the
biases and LayerNorm affines are not trivially zero or one.
"""),
    ("code", """def layer_norm(t, ln):
    \"\"\"LayerNorm over channels of every point of a (B, C, H, W) tensor, from ln's parameters.\"\"\"
    mean = t.mean(1, keepdim=True)
    var = t.var(1, unbiased=False, keepdim=True)
    return (t - mean) / torch.sqrt(var + ln.eps) * ln.weight.view(1, -1, 1, 1) + ln.bias.view(1, -1, 1, 1)


def linear(t, lin):
    \"\"\"The same nn.Linear applied to every point: (B, C_in, H, W) -> (B, C_out, H, W).\"\"\"
    return torch.einsum("oc,bchw->bohw", lin.weight, t) + lin.bias.view(1, -1, 1, 1)


def nearest(t, size):
    \"\"\"Nearest upsampling with SAPA's centre rule floor(i * H / H').\"\"\"
    return t[:, :, centres(size[0], t.shape[2])][:, :, :, centres(size[1], t.shape[3])]


def sapa_forward(module, x, y):
    \"\"\"SAPA's forward pass rebuilt from the module's parameters.\"\"\"
    x_n, y_n = layer_norm(x, module.norm_x), layer_norm(y, module.norm_y)
    size = y.shape[-2:]
    if module.variant == "I":
        query, key = y_n, x_n
    else:
        key = linear(x_n, module.k_x)
        if module.variant == "B":
            query = linear(y_n, module.q_y)
        elif module.variant == "P":
            query = linear(torch.cat([y_n, nearest(x, size)], dim=1), module.q_yx)
        else:  # "G"
            g = nearest(torch.sigmoid(linear(x_n, module.gate)), size)
            query = g * linear(y_n, module.q_y) + (1 - g) * linear(nearest(x, size), module.q_x)
    return sapa_unfold(query, key, x, module.kernel_size, padding=module.padding)


torch.manual_seed(1)
C_x, C_y, H, W = 16, 8, 7, 6
x = torch.randn(2, C_x, H, W)
y = torch.randn(2, C_y, 2 * H, 2 * W)
n_params = {}
for variant in ["I", "B", "P", "G"]:
    guide = C_x if variant == "I" else C_y            # "I" compares the features directly
    module = sapa.SAPA(C_x, guide, variant=variant, kernel_size=5, embedding_dim=4, backend="reference")
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    y_in = y if variant != "I" else torch.randn(2, C_x, 2 * H, 2 * W)
    with torch.no_grad():
        torch.testing.assert_close(sapa_forward(module, x, y_in), module(x, y_in))
        module.backend = "torch"
        torch.testing.assert_close(sapa_forward(module, x, y_in), module(x, y_in))
    n_params[variant] = sum(p.numel() for p in module.parameters())
    print(f"SAPA-{variant}: rebuilt forward == module(x, y)   ({n_params[variant]} parameters)")
for variant, n in n_params.items():
    glue(f"params_{variant}", n, display=False)"""),
    ("md", r"""The rebuilt forward pass matches `module(x, y)` for all four variants and both
pure-PyTorch backends, so the code in this chapter and the library cannot drift apart: if
either changes, this notebook fails. With $C = 16$, $C_y = 8$ and $d = 4$ the variants have
{glue:}`params_I` (I: only the two LayerNorms), {glue:}`params_B` (B), {glue:}`params_P` (P)
and {glue:}`params_G` (G) parameters.
"""),
    ("md", r"""## Odd sizes: skip connections of size $2H + 1$

Encoders with odd input sizes produce skip connections that are not exactly twice the decoder's
size, for instance $H' = 2H + 1$. The official kernels assert $H' = 2H$; the package instead
uses the centre rule $\lfloor iH/H' \rfloor$ for any $H' \geq H$, which spreads the extra row
over the map. The loops, the `unfold` version and the package agree on such sizes too:
"""),
    ("code", """H, W = 5, 4
Hq, Wq = 2 * H + 1, 2 * W + 1
q = torch.randn(1, 3, Hq, Wq, dtype=torch.float64)
k = torch.randn(1, 3, H, W, dtype=torch.float64)
v = torch.randn(1, 2, H, W, dtype=torch.float64)
for padding in ["zeros", "ignore"]:
    check_against_package(sapa_loops, q, k, v, K=3, padding=padding)
    check_against_package(sapa_unfold, q, k, v, K=3, padding=padding)
print("centres of the", Hq, "output rows:", centres(Hq, H).tolist())
torch.testing.assert_close(centres(Hq, H), sapa.window_centres(Hq, H))

# the same rule in floating point (F.interpolate's "nearest") can land one row off
mismatch, n_pairs = [], 0
for n_in in range(1, 257):
    t = torch.arange(n_in, dtype=torch.float32).view(1, 1, n_in, 1)
    for n_out in (2 * n_in + 1, 3 * n_in + 2, 5 * n_in + 3):
        n_pairs += 1
        fi = F.interpolate(t, size=(n_out, 1), mode="nearest").view(-1).long()
        if not torch.equal(fi, centres(n_out, n_in)):
            mismatch.append((n_in, n_out))
glue("n_pairs", n_pairs, display=False)
glue("n_mismatch", len(mismatch), display=False)
glue("mismatch_example", str(mismatch[0]) if mismatch else "none", display=False)
print(len(mismatch), "size pairs where F.interpolate(nearest) differs from floor(i * H / H'), e.g.", mismatch[:3])"""),
    ("md", r"""For $H = 5$ and $H' = 11$ every low-resolution row is the centre of two output rows except
one, which serves three. `F.interpolate(mode="nearest")` computes the same floor in floating
point; among the {glue:}`n_pairs` size pairs tried above (odd ratios such as $H' = 3H + 2$),
it disagrees with the integer rule on {glue:}`n_mismatch` of them (the first one, as $(H, H')$:
{glue:}`mismatch_example`). That is why the
package (and this chapter) computes centres with integers, and why `sapa.nearest_upsample_to`
exists.
"""),
    ("md", r"""## Padding: official zeros versus ignore

With zeros padding, the outside positions keep a logit of $0$ and a value of $0$. Their weight
is lost to the output, so a constant map comes out darker along the border; how much darker
depends on the logits inside the window. `padding="ignore"` renormalises over the real
positions and keeps a constant map constant.
"""),
    ("code", """H = W = 6
value = torch.ones(1, 1, H, W)
key = torch.full((1, 2, H, W), 0.5)
query = torch.full((1, 2, 2 * H, 2 * W), 0.5)           # every logit inside the map is 0.5
out = {p: sapa.sapa_upsample(query, key, value, 5, padding=p) for p in ["zeros", "ignore"]}
torch.testing.assert_close(out["ignore"], torch.ones_like(out["ignore"]))
print("zeros padding, first output row:", [round(t, 3) for t in out["zeros"][0, 0, 0].tolist()])
glue("corner_zeros", out["zeros"][0, 0, 0, 0].item(), display=False)
glue("centre_zeros", out["zeros"][0, 0, 5, 5].item(), display=False)"""),
    ("md", r"""A map of ones, upsampled with all inside logits equal, stays at
{glue:text}`centre_zeros:.3f` in the interior but drops to {glue:text}`corner_zeros:.3f` in the
corner with zeros padding; with `ignore` it is exactly one everywhere. The package defaults to
`"zeros"` because that is what the released SAPA models were trained with; `"ignore"` is the
cleaner choice for new models and is compared in the ablation chapter.
"""),
    ("md", r"""## Summary

* SAPA is a few lines of code: centre of each new point, dot products with the $K \times K$
  window, softmax, weighted sum. The loops, the `unfold` + `einsum` version and the package's
  `sapa_upsample` agree to rounding, in values and in gradients.
* The `unfold` formulation materialises a tensor $K^2$ times the size of the output; the
  package's `"torch"` backend avoids it and has its own backward, checked here against autograd.
* The `SAPA` module adds LayerNorm on both inputs, projections to $d$ channels and, for the
  gated variant, a sigmoid gate; the value stays the raw decoder feature. Its forward pass was
  rebuilt from its own parameters for every variant.
* Window centres are computed as $\lfloor iH/H' \rfloor$ in integers, which handles skip
  connections of size $2H + 1$.
* Official zeros padding lets outside positions absorb weight; `padding="ignore"` does not.
"""),
]


if __name__ == "__main__":
    write(NAME, CELLS)
