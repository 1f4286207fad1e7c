"""LearnBPR (Rendle et al. 2009, Algorithm 1) per triple, compiled with numba: BPR-MF's fast solver.

Each (user, positive i, negative j) triple reads the current rows and updates them at once, in
order, on one thread, as the paper's stochastic gradient ascent does (and as `implicit`'s Cython
BPR does per thread): no mini-batch, no optimiser state, no autograd, and bit-reproducible for a
seed because the order is the sampler's. numba is the `fast` extra (in `torch` and `all`).
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True, fastmath=True)
def learnbpr_triples(user_factors, item_factors, item_bias, users, positives, negatives, learning_rate, reg):
    """Apply LearnBPR to the triples (users[t], positives[t], negatives[t, n]) in order, in place; return
    the sum of -log sigmoid(x_uij) seen.

    x = <p_u, q_i - q_j> (+ b_i - b_j), s = lr * sigmoid(-x);
    p_u += s (q_i - q_j) - lr reg p_u;  q_i += s p_u - lr reg q_i;  q_j += -s p_u - lr reg q_j;
    b_i += s - lr reg b_i;  b_j += -s - lr reg b_j   (each update reads the rows before it).
    `item_bias` of length 0 means no biases. The arithmetic stays in the tables' float32 so that the
    loops over the factors vectorise (fastmath lets the dot product reassociate: results may differ
    in the last bits between CPU kinds, never between runs on one machine). The arrays are read in
    order: gather them in the epoch's order first (random reads here cost 3x the whole update).
    """
    n_factors = user_factors.shape[1]
    has_bias = item_bias.shape[0] > 0
    keep = np.float32(1.0 - learning_rate * reg)  # every touched parameter first shrinks by lr * reg
    rate = np.float32(learning_rate)
    one = np.float32(1.0)
    total = 0.0
    # -sum log sigmoid(x) as -log of products of 16 sigmoids: one log per 16 triples, not one each
    product, in_product = 1.0, 0
    for t in range(users.shape[0]):
        u, i = users[t], positives[t]
        for n in range(negatives.shape[1]):
            j = negatives[t, n]
            x = np.float32(0.0)
            for f in range(n_factors):
                x += user_factors[u, f] * (item_factors[i, f] - item_factors[j, f])
            if has_bias:
                x += item_bias[i] - item_bias[j]
            if x >= 30.0:  # sigmoid(-x) < 1e-13: only the decay moves the rows, the loss term is ~0
                step = np.float32(0.0)
            elif x <= -30.0:
                total -= x
                step = rate
            else:
                e = np.exp(x)
                s = one / (one + e)  # sigmoid(-x)
                product *= e * s  # sigmoid(x)
                in_product += 1
                if in_product == 16:
                    total -= math.log(product)
                    product, in_product = 1.0, 0
                step = rate * s
            for f in range(n_factors):
                p = user_factors[u, f]
                q_i = item_factors[i, f]
                q_j = item_factors[j, f]
                user_factors[u, f] = keep * p + step * (q_i - q_j)
                item_factors[i, f] = keep * q_i + step * p
                item_factors[j, f] = keep * q_j - step * p
            if has_bias:
                b_i, b_j = item_bias[i], item_bias[j]
                item_bias[i] = keep * b_i + step
                item_bias[j] = keep * b_j - step
    return total - math.log(product)


def learnbpr_step(user_weight, item_weight, item_bias, users, positives, negatives, learning_rate: float,
                  reg: float):
    """`learnbpr_triples` on torch CPU weight tensors (shared memory, no copy) and numpy triples (in
    training order; (B, N) negatives); returns the batch's mean -log sigmoid(x_uij) as a tensor."""
    import torch

    bias = item_bias.detach().numpy() if item_bias is not None else np.zeros(0, dtype=np.float32)
    total = learnbpr_triples(user_weight.detach().numpy(), item_weight.detach().numpy(), bias, users, positives,
                             negatives, float(learning_rate), float(reg))
    return torch.tensor(total / max(negatives.size, 1))
