"""Plain float64 reference formulas for the tests, written as the chapter states them.

numpy only, one tensor at a time, no attempt at speed. Each optimizer function takes one
parameter array, its gradient and a dict holding that parameter's state (empty at the start),
updates the state and returns the new parameter array.
"""

import numpy as np


def sgd(theta, g, state, *, lr, momentum=0.0, nesterov=False):
    """m <- beta m - lr g; theta <- theta + m (Nesterov: theta + beta m - lr g)."""
    m = momentum * state.get("m", 0.0) - lr * g
    state["m"] = m
    if nesterov:
        return theta + momentum * m - lr * g
    return theta + m


def sgd_lookahead(theta, grad_at, state, *, lr, momentum):
    """The chapter's Nesterov form: m <- beta m - lr grad(theta + beta m); theta <- theta + m.

    `grad_at(point)` returns the gradient at a point; the state keeps m.
    """
    m = state.get("m", np.zeros_like(theta))
    m = momentum * m - lr * grad_at(theta + momentum * m)
    state["m"] = m
    return theta + m


def adagrad(theta, g, state, *, lr, eps):
    """s <- s + g^2; theta <- theta - lr g / sqrt(s + eps)."""
    s = state.get("s", 0.0) + g * g
    state["s"] = s
    return theta - lr * g / np.sqrt(s + eps)


def rmsprop(theta, g, state, *, lr, rho, eps):
    """s <- rho s + (1 - rho) g^2; theta <- theta - lr g / sqrt(s + eps)."""
    s = rho * state.get("s", 0.0) + (1 - rho) * g * g
    state["s"] = s
    return theta - lr * g / np.sqrt(s + eps)


def adam(theta, g, state, *, lr, betas, eps):
    """Kingma and Ba with bias correction, eps added to sqrt(s_hat)."""
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
    s = state["s"] = b2 * state.get("s", 0.0) + (1 - b2) * g * g
    m_hat = m / (1 - b1**t)
    s_hat = s / (1 - b2**t)
    return theta - lr * m_hat / (np.sqrt(s_hat) + eps)


def adamw(theta, g, state, *, lr, betas, eps, weight_decay):
    """theta <- theta - lr wd theta, then Adam's step."""
    return adam(theta - lr * weight_decay * theta, g, state, lr=lr, betas=betas, eps=eps)


def adamax(theta, g, state, *, lr, betas, eps):
    """m <- b1 m + (1 - b1) g; u <- max(b2 u, |g|); theta <- theta - lr / (1 - b1^t) m / (u + eps)."""
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
    u = state["u"] = np.maximum(b2 * state.get("u", 0.0), np.abs(g))
    return theta - lr / (1 - b1**t) * m / (u + eps)


def nadam(theta, g, state, *, lr, betas, eps, momentum_decay=0.004):
    """Dozat's Nadam as Keras 2 wrote it (schedule_decay = momentum_decay)."""
    b1, b2 = betas
    t = state["t"] = state.get("t", 0) + 1
    mu_t = b1 * (1 - 0.5 * 0.96 ** (t * momentum_decay))
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * momentum_decay))
    product = state["product"] = state.get("product", 1.0) * mu_t
    product_next = product * mu_next
    m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
    v = state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
    g_prime = g / (1 - product)
    m_prime = m / (1 - product_next)
    v_hat = v / (1 - b2**t)
    m_bar = (1 - mu_t) * g_prime + mu_next * m_prime
    return theta - lr * m_bar / (np.sqrt(v_hat) + eps)


def power_lr(t, lr0, s, c=1.0):
    """The chapter's power scheduling: lr0 / (1 + t / s)^c."""
    return lr0 / (1 + t / s) ** c


def exponential_lr(t, lr0, s):
    """The chapter's exponential scheduling: lr0 * 0.1^(t / s)."""
    return lr0 * 0.1 ** (t / s)


def piecewise_lr(t, boundaries, values):
    """values[i] for boundaries[i - 1] <= t < boundaries[i]."""
    for boundary, value in zip(boundaries, values, strict=False):
        if t < boundary:
            return value
    return values[-1]


def onecycle_ends(total_steps, pct_start):
    """The steps where 1cycle's three linear pieces meet (torch's phase ends)."""
    return [0.0, pct_start * total_steps - 1, 2 * pct_start * total_steps - 2, total_steps - 1]


def onecycle_lr(t, max_lr, total_steps, pct_start, div_factor, final_div_factor):
    """start -> max_lr -> start -> start / final_div_factor, linearly, with start = max_lr / div_factor."""
    start = max_lr / div_factor
    lrs = [start, max_lr, start, start / final_div_factor]
    return np.interp(t, onecycle_ends(total_steps, pct_start), lrs)


def onecycle_momentum(t, total_steps, pct_start, base_momentum, max_momentum):
    """max -> base -> max, then constant: the other way round from the learning rate."""
    momenta = [max_momentum, base_momentum, max_momentum, max_momentum]
    return np.interp(t, onecycle_ends(total_steps, pct_start), momenta)
