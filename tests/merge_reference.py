"""Float64 numpy reference of every deterministic merge method, from docs/merge_semantics.md.

Independent of evomerge_jax.merge on purpose: plain loops and full sorts (argsort top-k, ascending
breadcrumb bands) instead of the threshold tables, Python floats for int(d·n), a while loop for the
Karcher mean. Signature of every entry: (base or None, sources [K, ...], params dict, options dict).
Random sparsifiers are only defined here at density 1, where they keep everything.
"""

from __future__ import annotations

import numpy as np


def _unit(v, floor=0.0):
    n = np.linalg.norm(v)
    return v / max(n, floor) if n > 0 else v


def _sparsify(delta, d, sparsifier, gamma):
    n = delta.size
    flat = np.abs(delta).ravel()
    keep = np.zeros(n, bool)
    if sparsifier == "magnitude":
        k = 0 if d <= 0 else max(int(d * n), 1)
        keep[np.argsort(-flat, kind="stable")[:k]] = True
    elif sparsifier == "magnitude_outliers":
        target, top = int(d * n), int(gamma * n)
        bottom = max(0, n - target - top)
        keep[np.argsort(flat, kind="stable")[bottom:bottom + target]] = True
    else:
        raise NotImplementedError(f"{sparsifier} is random: the reference covers density 1 only")
    return np.where(keep.reshape(delta.shape), delta, 0.0)


def task_vector(base, sources, params, consensus, sparsifier, normalize, rescale):
    """Steps 1-6 of the task-vector family."""
    num = len(sources)
    weight = np.broadcast_to(np.asarray(params["weight"], float), (num,))
    density = np.broadcast_to(np.asarray(params.get("density", 1.0), float), (num,))
    gamma = np.broadcast_to(np.asarray(params.get("gamma", 0.01), float), (num,))
    normalize = params.get("normalize", normalize)
    rescale = params.get("rescale", rescale)
    deltas = []
    for k in range(num):
        delta = sources[k] - base
        if sparsifier is not None and density[k] < 1:
            kept = _sparsify(delta, float(density[k]), sparsifier, float(gamma[k]))
            before, after = np.abs(delta).sum(), np.abs(kept).sum()
            if rescale and before >= 1e-7 and after >= 1e-7:
                kept = kept * (before / after)
            delta = kept
        deltas.append(weight[k] * delta)
    weighted = np.stack(deltas)
    w = weight.reshape((-1,) + (1,) * base.ndim) * np.ones_like(weighted)
    if consensus:
        total = weighted.sum(0)
        elected = np.where(total >= 0, 1.0, -1.0)
        agree = np.sign(weighted) == elected
        merged = (weighted * agree).sum(0)
        divisor = (w * agree).sum(0)
        divisor[divisor == 0] = 1.0
    else:
        merged = weighted.sum(0)
        divisor = weight.sum()
        divisor = 1.0 if abs(divisor) < 1e-8 else divisor
    if normalize:
        merged = merged / divisor
    return base + params.get("lambda", 1.0) * merged


def linear(base, sources, params, options):
    w = np.asarray(params["weight"], float)
    merged = np.tensordot(w, sources, axes=1)
    return merged / w.sum() if params.get("normalize", True) else merged


def _slerp(t, v0, v1):
    dot = float(np.dot(_unit(v0), _unit(v1)))
    if abs(dot) > 0.9995:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(dot)
    return np.sin((1 - t) * theta) / np.sin(theta) * v0 + np.sin(t * theta) / np.sin(theta) * v1


def slerp(base, sources, params, options):
    return _slerp(params["t"], base.ravel(), sources[0].ravel()).reshape(base.shape)


def _nuslerp_vec(t, v0, v1):
    u0, u1 = v0 / max(np.linalg.norm(v0), 1e-7), v1 / max(np.linalg.norm(v1), 1e-7)
    cos = np.clip(np.dot(u0, u1), -1.0, 1.0)
    if 1 - cos * cos <= 1e-16:
        return (1 - t) * v0 + t * v1
    theta = np.arccos(cos)
    return (np.sin((1 - t) * theta) * v0 + np.sin(t * theta) * v1) / np.sin(theta)


def nuslerp(base, sources, params, options):
    w1, w2 = params["weight"]
    t = 0.5 if abs(w1 + w2) < 1e-6 else w2 / (w1 + w2)
    v0, v1 = (sources[0], sources[1]) if base is None else (sources[0] - base, sources[1] - base)
    if options.get("nuslerp_flatten", True) or v0.ndim == 1:
        out = _nuslerp_vec(t, v0.ravel(), v1.ravel()).reshape(v0.shape)
    elif options.get("nuslerp_row_wise", False):  # one vector per column
        out = np.stack([_nuslerp_vec(t, v0[:, j], v1[:, j]) for j in range(v0.shape[1])], axis=1)
    else:  # one vector per row
        out = np.stack([_nuslerp_vec(t, v0[i], v1[i]) for i in range(v0.shape[0])])
    return out if base is None else base + out


def multislerp(base, sources, params, options):
    xs = [s.ravel() - (0 if base is None else base.ravel()) for s in sources]
    w = np.asarray(params["weight"], float)
    if params.get("normalize_weights", True):
        w = w / w.sum()
    eps = params.get("eps", 1e-8)
    norms = [np.linalg.norm(x) for x in xs]
    units = [x / max(n, eps) for x, n in zip(xs, norms)]
    m = sum(wi * u for wi, u in zip(w, units))
    if np.linalg.norm(m) < eps:
        assert len(xs) == 2, "more than two models with a zero mean raise"
        out = w[0] * xs[0] + w[1] * xs[1]
    else:
        m = m / np.linalg.norm(m)
        tau = sum(wi * (u - np.dot(u, m) * m) for wi, u in zip(w, units))
        size = np.linalg.norm(tau)
        r = m if size < eps else m * np.cos(size) + tau * np.sin(size) / size
        out = r * sum(wi * n for wi, n in zip(w, norms))
    out = out.reshape(sources[0].shape)
    return out if base is None else base + out


def karcher(base, sources, params, options):
    xs = [s.ravel() for s in sources]
    norms = [np.linalg.norm(x) for x in xs]
    units = [x / n for x, n in zip(xs, norms)]
    mean = _unit(sum(units) / len(units))
    for _ in range(options.get("max_iter", 10)):
        grad = np.zeros_like(mean)
        for u in units:
            cos = np.clip(np.dot(mean, u), -1.0, 1.0)
            theta = np.arccos(cos)
            if theta > 1e-12:
                grad += (u - cos * mean) * theta / np.sin(theta) / len(units)
        size = np.linalg.norm(grad)
        if size < params.get("tol", 1e-5):
            break
        mean = _unit(np.cos(size) * mean + np.sin(size) * grad / size)
    return (mean * np.mean(norms)).reshape(sources[0].shape)


def model_stock(base, sources, params, options):
    num = len(sources)
    offsets = [s - base for s in sources]
    rows = options.get("filter_wise", False) and base.ndim > 1

    def cosine(a, b):
        if rows:
            return np.array([np.dot(a[i], b[i]) / max(np.linalg.norm(a[i]) * np.linalg.norm(b[i]), 1e-8)
                             for i in range(a.shape[0])])[:, None]
        return np.dot(a.ravel(), b.ravel()) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8)

    c = np.mean([cosine(offsets[i], offsets[j]) for i in range(num) for j in range(i + 1, num)], axis=0)
    denominator = 1 + (num - 1) * c
    t = np.where(np.abs(denominator) < 1e-6, 0.0, num * c / np.where(denominator == 0, 1, denominator))
    return t * np.mean(sources, axis=0) + (1 - t) * base


def sce(base, sources, params, options):
    tasks = np.stack([s - base for s in sources])
    select = params.get("select_topk", 1.0)
    if select < 1:
        var = tasks.var(axis=0)
        k = int(np.float32(np.count_nonzero(var)) * np.float32(select))  # mergekit counts in float32
        keep = np.zeros(var.size, bool)
        keep[np.argsort(-var.ravel(), kind="stable")[:k]] = True
        tasks = tasks * keep.reshape(var.shape)
    energy = np.array([np.mean(t * t) for t in tasks])
    shares = np.full(len(tasks), 1 / len(tasks)) if energy.sum() < 1e-6 else energy / energy.sum()
    elected = np.where(tasks.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(tasks) == elected
    share = shares.reshape((-1,) + (1,) * base.ndim)
    return base + (share * agree * tasks).sum(0) / np.maximum((share * agree).sum(0), 1e-6)


def nearswap(base, sources, params, options):
    w = np.clip(params["t"] / np.maximum(np.abs(base - sources[0]), 1e-6), 0, 1)
    return w * sources[0] + (1 - w) * base


def arcee_fusion(base, sources, params, options):
    x, a = sources[0], base
    rows = (x.shape[0], -1) if x.ndim > 1 else (1, -1)  # a 1-D tensor is one row
    rx, ra = x.reshape(rows), a.reshape(rows)
    p = np.exp(rx - rx.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
    q = np.exp(ra - ra.max(-1, keepdims=True)); q /= q.sum(-1, keepdims=True)
    kl = (p * (np.log(p) - np.log(q))).sum(-1, keepdims=True)
    importance = (np.abs(rx - ra) * kl + 1e-8).reshape(x.shape)
    s = np.sort(importance.ravel())
    quantile = lambda q: s[int(np.floor(q * (s.size - 1)))]  # noqa: E731
    threshold = quantile(0.5) + 1.5 * (quantile(0.75) - quantile(0.25))
    return a + np.where(importance >= threshold, x - a, 0.0)


def ram(base, sources, params, options, plus=False):
    deltas = np.stack([s - base for s in sources])
    changed = np.abs(deltas) > params.get("epsilon", 1e-5)
    count = changed.sum(0)
    out = base.copy()
    for k in range(len(sources)):
        unique = changed[k] & (count == 1)
        factor = 1.0
        if plus:
            n_unique, n_shared = unique.sum(), (changed[k] & (count > 1)).sum()
            ratio = n_shared / n_unique if n_unique else 0.0
            factor = 1 + params.get("r", 0.1) * min(max(ratio, 0.0), params.get("alpha", 0.2))
        out = out + np.where(unique, deltas[k] * factor, 0.0)
    shared = (deltas * changed).sum(0) / np.maximum(count, 1)
    return out + np.where(count > 1, shared, 0.0)


def passthrough(base, sources, params, options):
    return sources[0] * params.get("scale", 1.0)


TASK_VECTOR = {  # name -> (consensus, sparsifier, normalize, rescale), merge_semantics.md §2
    "task_arithmetic": (None, None, False, False), "ties": ("sum", "magnitude", True, False),
    "dare_ties": ("sum", "random", False, True), "dare_linear": (None, "random", False, True),
    "breadcrumbs": (None, "magnitude_outliers", False, False),
    "breadcrumbs_ties": ("sum", "magnitude_outliers", False, False),
    "della": ("sum", "della_magprune", True, True), "della_linear": (None, "della_magprune", False, True),
}
REFERENCES = {
    "linear": linear, "slerp": slerp, "nuslerp": nuslerp, "multislerp": multislerp, "karcher": karcher,
    **{name: (lambda b, s, p, o, row=row: task_vector(b, s, p, *row)) for name, row in TASK_VECTOR.items()},
    "model_stock": model_stock, "sce": sce, "nearswap": nearswap, "arcee_fusion": arcee_fusion,
    "ram": ram, "ramplus_tl": lambda b, s, p, o: ram(b, s, p, o, plus=True), "passthrough": passthrough,
}
