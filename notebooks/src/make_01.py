"""Generate notebooks/01_point_affiliation.ipynb (chapter 1), without outputs.

Run: python notebooks/src/make_01.py [output_dir]   (default: notebooks/)
"""
from __future__ import annotations

from _nbgen import COLAB_CELL, GLUE_CELL, write

NAME = "01_point_affiliation.ipynb"

CELLS = [
    ("md", r"""# Point affiliation

:::{admonition} Learning goals
:class: tip

After this chapter you can

* say what an upsampler has to decide for every new high-resolution point (its **point
  affiliation**, after {cite:t}`sapa2022`);
* read any upsampler as a small **kernel** over a window of low-resolution points, and extract
  that kernel from a black-box implementation;
* explain, with numbers, where nearest-neighbour interpolation **misassigns** points and where
  bilinear interpolation **blurs** them at a boundary;
* describe the kernel an ideal upsampler would use in a smooth region and at a boundary.
:::
"""),
    ("code", COLAB_CELL),
    ("code", GLUE_CELL + """

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import sapa

torch.manual_seed(0)
print("sapa", sapa.__version__, "| torch", torch.__version__, "| profile", sapa.get_profile())"""),
    ("md", r"""## A wall with a picture on it

The SAPA paper explains upsampling with a picture hanging on a wall. We build that scene as a
toy label image: a high-resolution map $Y$ of $H' \times W'$ points where $1$ marks the
*picture* and $0$ the *wall*. The picture is a disk whose centre is placed off the pixel grid
so that the boundary crosses pixels in every possible way.

A decoder sees the scene at half the resolution. Each of its points summarises a $2 \times 2$
block of the image; since decoder features are *semantic*, we let each low-resolution point take
the label of the majority of its block. The result $X$ is a map of $H \times W$ points with
$H = H'/2$, in which every point belongs to one of two **semantic clusters**: the wall
(value $a = 0$) or the picture (value $b = 1$).
"""),
    ("code", """Hh, Wh = 48, 48                                 # high resolution H' x W'
rows = torch.arange(Hh, dtype=torch.float32)[:, None] + 0.5
cols = torch.arange(Wh, dtype=torch.float32)[None, :] + 0.5
picture = ((rows - 23.3) ** 2 + (cols - 25.1) ** 2 <= 14.2 ** 2).float()   # Y: 1 = picture, 0 = wall
Y = picture[None, None]                            # (1, 1, H', W')

# the decoder's view: one semantic label per 2 x 2 block (majority, ties go to the picture)
X = (F.avg_pool2d(Y, 2) >= 0.5).float()            # (1, 1, H, W)
H, W = X.shape[-2:]
print("high-res", tuple(Y.shape), "-> low-res", tuple(X.shape))

fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
axes[0].imshow(Y[0, 0], cmap="viridis", vmin=0, vmax=1)
axes[0].set_title(f"image Y, {Hh} x {Wh}")
axes[1].imshow(X[0, 0], cmap="viridis", vmin=0, vmax=1)
axes[1].set_title(f"decoder view X, {H} x {W}")
for ax in axes:
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
    ("md", r"""## What an upsampler decides

Upsampling $X$ by two creates four new points for each low-resolution point. For a new point at
$l' = (i, j)$ the upsampler has to decide *which low-resolution points it should resemble*:
which semantic cluster it is *affiliated* to. Every upsampler in this book does it the same way:
it looks at a small window of low-resolution points around $l = (\lfloor i/2 \rfloor,
\lfloor j/2 \rfloor)$ and returns a weighted sum of them, with weights that we call the
**kernel** of the point $l'$.

Fixed interpolations use the same kernel everywhere (up to the phase of $l'$ inside its
$2 \times 2$ block). Since they are linear, their kernel can be read off without looking at
their code: upsample a stack of **impulse maps**, one channel per low-resolution position, each
with a single $1$. Channel $c$ of the output at $l'$ is then the weight that $l'$ gives to
low-resolution point $c$. The same trick works for SAPA (which is linear in its *value*), and we
will use it again in the next chapters.
"""),
    ("code", """def impulses(h, w):
    \"\"\"(1, h*w, h, w): channel c is 1 at low-res position c and 0 elsewhere.\"\"\"
    return torch.eye(h * w).view(1, h * w, h, w)


def kernel_at(upsample, i, j, h=5, w=5):
    \"\"\"Weights that output point (i, j) gives to each point of an h x w low-res map.\"\"\"
    out = upsample(impulses(h, w))           # (1, h*w, 2h, 2w)
    return out[0, :, i, j].view(h, w)


nearest = lambda v: F.interpolate(v, scale_factor=2, mode="nearest")
bilinear = lambda v: F.interpolate(v, scale_factor=2, mode="bilinear", align_corners=False)

fig, axes = plt.subplots(2, 4, figsize=(9, 4.6))
for col, (i, j) in enumerate([(4, 4), (4, 5), (5, 4), (5, 5)]):
    for row, (name, up) in enumerate([("nearest", nearest), ("bilinear", bilinear)]):
        k = kernel_at(up, i, j)
        ax = axes[row, col]
        ax.imshow(k, cmap="magma", vmin=0, vmax=1)
        for (r, c), v in zip(torch.cartesian_prod(torch.arange(5), torch.arange(5)).tolist(), k.flatten().tolist()):
            if v > 0:
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=7, color="white" if v < 0.5 else "black")
        ax.set_title(f"{name}, l'=({i},{j})", fontsize=9)
        ax.set_xticks([]); ax.set_yticks([])
plt.suptitle("kernels over the 5 x 5 low-res window centred at l = (2, 2)")
plt.tight_layout()
plt.show()

k_bil = kernel_at(bilinear, 4, 4)
glue("bil_w_max", round(k_bil.max().item(), 4), display=False)
glue("bil_w_min", round(k_bil[k_bil > 0].min().item(), 4), display=False)
glue("bil_support", int((k_bil > 0).sum()), display=False)"""),
    ("md", r"""Nearest neighbour puts all the weight on the centre $l$: the four new points copy their
parent. Bilinear interpolation spreads the weight over {glue:}`bil_support` points, from
{glue:}`bil_w_max` on the closest one down to {glue:}`bil_w_min` on the farthest one. In both
cases the weights depend only on the position of $l'$, never on the content of the window.
"""),
    ("md", r"""## Upsampling the decoder's view

We now upsample $X$ back to $48 \times 48$ and compare with the true image $Y$. Two things can
go wrong at a new point:

* it is **misassigned**: its value is closer to the other cluster than to its own one (we
  round the value to $0$ or $1$ and compare with $Y$);
* it is **blurred**: its value is neither the wall's nor the picture's, so it belongs to no
  cluster at all (we call a value blurred when it is more than $0.05$ away from both $0$ and $1$).
"""),
    ("code", """def affiliation_errors(up, truth, tol=0.05):
    \"\"\"(misassigned mask, blurred mask) of an upsampled label map against the truth.\"\"\"
    misassigned = (up >= 0.5).float() != truth
    blurred = torch.minimum(up, 1 - up) > tol
    return misassigned, blurred


up_nearest = nearest(X)
up_bilinear = bilinear(X)
boundary = (F.max_pool2d(Y, 3, 1, 1) != -F.max_pool2d(-Y, 3, 1, 1))   # points next to the edge
results = {}
for name, up in [("nearest", up_nearest), ("bilinear", up_bilinear)]:
    mis, blur = affiliation_errors(up, Y)
    results[name] = (mis, blur)
    glue(f"{name}_mis", int(mis.sum()), display=False)
    glue(f"{name}_blur", int(blur.sum()), display=False)
    print(f"{name:9s} misassigned {int(mis.sum()):4d}   blurred {int(blur.sum()):4d}   "
          f"(of {Hh * Wh} points)")
glue("n_points", Hh * Wh, display=False)
glue("n_boundary", int(boundary.sum()), display=False)
mis_off_boundary = sum(int((m & ~boundary).sum()) for m, _ in results.values())
assert mis_off_boundary == 0, "the prose below says every misassigned point is at the boundary"
glue("mis_off_boundary", mis_off_boundary, display=False)"""),
    ("code", """fig, axes = plt.subplots(2, 3, figsize=(9.5, 6.3))
for row, (name, up) in enumerate([("nearest", up_nearest), ("bilinear", up_bilinear)]):
    mis, blur = results[name]
    axes[row, 0].imshow(up[0, 0], cmap="viridis", vmin=0, vmax=1)
    axes[row, 0].set_title(f"{name} upsampling")
    axes[row, 1].imshow(mis[0, 0], cmap="Reds", vmin=0, vmax=1)
    axes[row, 1].set_title(f"misassigned: {int(mis.sum())}")
    axes[row, 2].imshow(blur[0, 0], cmap="Blues", vmin=0, vmax=1)
    axes[row, 2].set_title(f"blurred: {int(blur.sum())}")
for ax in axes.flat:
    ax.contour(Y[0, 0], levels=[0.5], colors="k", linewidths=0.6)
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
    ("md", r"""The black line is the true boundary. Out of {glue:}`n_points` points, nearest-neighbour
upsampling misassigns {glue:}`nearest_mis` and blurs {glue:}`nearest_blur`: every new point
copies a clean label, but near the boundary it copies the label of the wrong cluster, which
turns the circle into a staircase of $2 \times 2$ blocks. Bilinear interpolation misassigns
{glue:}`bilinear_mis` points and blurs {glue:}`bilinear_blur`: it mixes the two clusters along
the whole boundary, so that the points there belong to neither.

The errors sit on the boundary: the two methods together misassign {glue:}`mis_off_boundary`
points that are more than one pixel away from it. Away from the boundary, both interpolations do the right thing, because every
point of their window belongs to the same cluster. This is the situation the SAPA paper
describes: fixed kernels are fine in **smooth** regions and wrong in **detail** regions.
"""),
    ("md", r"""## Semantic clusters inside a window

Let us zoom in on one new point near the boundary and look at the $3 \times 3$ window of
low-resolution points around its parent. The window contains points of both clusters. A good
kernel should put its weight on the points of the cluster that the new point *really* belongs
to, which only the high-resolution image $Y$ can tell, and nothing on the others.
"""),
    ("code", """# a new point that nearest upsampling misassigns
mis_n = results["nearest"][0][0, 0]
i, j = [int(t) for t in mis_n.nonzero()[0]]
ci, cj = i // 2, j // 2
window = X[0, 0, ci - 1 : ci + 2, cj - 1 : cj + 2]
truth = int(Y[0, 0, i, j])
same = window == truth
glue("zoom_point", f"({i}, {j})", display=False)
glue("zoom_truth", "picture" if truth == 1 else "wall", display=False)
glue("zoom_parent", "picture" if int(X[0, 0, ci, cj]) == 1 else "wall", display=False)
glue("zoom_same", int(same.sum()), display=False)

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
r0, c0 = max(i - 8, 0), max(j - 8, 0)
axes[0].imshow(Y[0, 0, r0 : r0 + 16, c0 : c0 + 16], cmap="viridis", vmin=0, vmax=1)
axes[0].plot(j - c0, i - r0, "r*", ms=14)
axes[0].set_title(f"image Y near l' = ({i}, {j})")
axes[1].imshow(window, cmap="viridis", vmin=0, vmax=1)
for r in range(3):
    for c in range(3):
        label = "picture" if window[r, c] == 1 else "wall"
        axes[1].text(c, r, label + ("\\nparent" if (r, c) == (1, 1) else ""), ha="center", va="center",
                     color="white" if window[r, c] == 0 else "black", fontsize=8)
axes[1].set_title("3 x 3 low-res window around l")
for ax in axes:
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
    ("md", r"""The new point {glue:}`zoom_point` lies on the {glue:}`zoom_truth` in the image, but its
parent low-resolution point was labelled {glue:}`zoom_parent`, so nearest upsampling gets it
wrong. Yet {glue:}`zoom_same` points of its window do belong to the right cluster: the
information needed to affiliate the point correctly is *in the window*. What is missing is a
kernel that knows *which* of the window's points to pick.
"""),
    ("md", r"""## A preview: letting similarity choose

Suppose we could compare the new point, as seen in the high-resolution image, with each point of
its window, and weight each window point by how similar the two are. In a smooth window all
points are equally similar, so the kernel is a plain average; in a detail window the points of
the right cluster win. This is the idea of SAPA, developed in the next two chapters.

Here we try it with the package's operator `sapa.sapa_upsample(query, key, value)`. The query is
the image $Y$ mapped to $\pm 1$ (one number per new point), the key is $X$ mapped the same way,
and the value is $X$. The similarity of a new point with a window point is the product of their
two numbers (scaled by $4$ to make the choice decisive), turned into weights by a softmax over a
$3 \times 3$ window.
"""),
    ("code", """scale = 2.0
query = scale * (2 * Y - 1)            # (1, 1, H', W'): +2 on the picture, -2 on the wall
key = scale * (2 * X - 1)              # (1, 1, H, W)
up_similar = sapa.sapa_upsample(query, key, X, kernel_size=3)
mis, blur = affiliation_errors(up_similar, Y)
glue("similar_mis", int(mis.sum()), display=False)
glue("similar_blur", int(blur.sum()), display=False)
glue("similar_err", float((up_similar - Y).abs().max()), display=False)
print(f"similarity  misassigned {int(mis.sum()):4d}   blurred {int(blur.sum()):4d}")

fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.4))
axes[0].imshow(up_similar[0, 0], cmap="viridis", vmin=0, vmax=1)
axes[0].set_title("similarity-aware upsampling")
axes[1].imshow(mis[0, 0], cmap="Reds", vmin=0, vmax=1)
axes[1].set_title(f"misassigned: {int(mis.sum())}")
axes[2].imshow(blur[0, 0], cmap="Blues", vmin=0, vmax=1)
axes[2].set_title(f"blurred: {int(blur.sum())}")
for ax in axes:
    ax.contour(Y[0, 0], levels=[0.5], colors="k", linewidths=0.6)
    ax.set_xticks([]); ax.set_yticks([])
plt.tight_layout()
plt.show()"""),
    ("md", r"""With the same $3 \times 3$ window as bilinear interpolation, the similarity-aware kernel
misassigns {glue:}`similar_mis` points and blurs {glue:}`similar_blur`; its largest deviation
from the true image is {glue:text}`similar_err:.2g`. The toy is easy on purpose: the query is the
answer itself. Real encoder features are noisy and real decoder features are not two numbers,
which is why SAPA needs the care (normalisation, projections, a gate) that the next chapters
explain.
"""),
    ("md", r"""## Summary

* Upsampling by two creates new points that must each be **affiliated** to a semantic cluster of
  the low-resolution map; an upsampler does this with a kernel over a small window.
* The kernel of any linear upsampler can be read off by upsampling impulse maps.
* **Nearest** neighbour gives every new point its parent's label: clean values, but
  misassigned points along boundaries ({glue:}`nearest_mis` here). **Bilinear** interpolation
  mixes neighbours with fixed weights: it blurs the boundary ({glue:}`bilinear_blur` points
  belong to no cluster) and still misassigns {glue:}`bilinear_mis`.
* Both are right in **smooth** windows and wrong in **detail** windows, because their weights
  ignore the content of the window.
* A kernel that weights window points by their **similarity** to the high-resolution point
  averages in smooth windows and selects the right cluster at boundaries: the idea behind SAPA
  {cite:p}`sapa2022`, derived in the next chapter.
"""),
]


if __name__ == "__main__":
    write(NAME, CELLS)
