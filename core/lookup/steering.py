"""Training-free discrete quality steering (IQPFR's quality optimisation in code space).

Each token may only move to one of its top-k codes under the lookup logits. Per round:

1. decode the current codes with gradients to the *code vectors* (not the weights) and take the
   critic's gradient ``g`` there;
2. first-order gain of swapping token t to candidate c: ``g_t . (e_c - e_cur)``; each token proposes
   its best candidate, tokens are ranked by gain;
3. the best ``m`` proposals are applied for every ``m`` on a fixed grid {1, 4, 16, ...} up to the
   budget ``strength * max_fraction * tokens``; each candidate is decoded without gradients and
   scored exactly; a face keeps the best candidate only if it beats its current score.

Why greedy with exact re-scoring rather than straight-through optimisation of soft codes: the critic is
judged on hard codes, so every accepted change is a verified improvement (the output never scores below
the base output), codes stay inside the top-k set (no drift into what the critic likes but the prior
does not: the over-optimisation IQPFR avoids), and the cost is a fixed, small number of decodes.
The grid is fixed and nested, so a larger strength only adds candidates: in one round the returned
score is non-decreasing in strength for every face. strength 0 never gets here (base output exactly).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

Critic = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SteerResult:
    indices: torch.Tensor                  # [N, L]
    score_before: torch.Tensor             # [N] critic of the base output
    score_after: torch.Tensor              # [N] critic of the returned output
    changed: torch.Tensor                  # [N] tokens changed
    decodes: int = 0
    notes: list = field(default_factory=list)


def budget_grid(strength: float, tokens: int, max_fraction: float, factor: int = 4) -> list[int]:
    """Changed-token counts tried: 1, factor, factor^2, ... up to the budget (the same grid for every strength)."""
    budget = max(1, int(strength * max_fraction * tokens))
    grid, m = [], 1
    while m <= budget:
        grid.append(m)
        m *= max(2, int(factor))
    return grid


def steer(model, lq_feat: torch.Tensor, skips: Mapping[str, torch.Tensor], logits: torch.Tensor,
          indices: torch.Tensor, fidelity: float, critic: Critic, strength: float, *, top_k: int = 8,
          rounds: int = 2, max_fraction: float = 0.5, grid_factor: int = 4) -> SteerResult:
    """Return steered code indices for a batch. ``model``: the shared lookup surface (decode -> [-1,1])."""
    n, tokens, k_all = logits.shape
    grid = budget_grid(strength, tokens, max_fraction, grid_factor)
    k = max(1, min(int(top_k), k_all))
    cand = logits.topk(k, dim=-1).indices                                  # [N,L,k]
    books = model.codebooks                                                # [G,K,C]
    group = torch.div(torch.arange(tokens, device=logits.device), tokens // books.shape[0], rounding_mode="floor")
    cand_feats = books[group.view(1, -1, 1).expand_as(cand), cand]       # [N,L,k,C]

    def render(idx: torch.Tensor, raw=None) -> torch.Tensor:
        raw = model.code_features(idx) if raw is None else raw
        out = model.decode(model.finish_quantize(raw, lq_feat), skips, fidelity)
        return ((out.float() + 1) / 2).clamp(0, 1)

    cur = indices.clone()
    best_score = None
    start_score = None
    decodes = 0
    notes: list[str] = []
    for _ in range(max(1, int(rounds))):
        with torch.enable_grad():
            raw = model.code_features(cur).detach().float().requires_grad_(True)
            score = critic(render(cur, raw)).float()
            decodes += 1
            grad = None
            if score.requires_grad:
                grad = torch.autograd.grad(score.sum(), raw)[0]
        score = score.detach()
        if start_score is None:
            start_score, best_score = score.clone(), score.clone()
        if grad is not None:
            gain = ((cand_feats.float() - raw.detach().unsqueeze(2)) * grad.unsqueeze(2)).sum(-1)   # [N,L,k]
        else:  # critic without gradients: try the least unlikely alternatives first
            if "critic has no gradients" not in notes:
                notes.append("critic has no gradients; candidates ranked by logit margin")
            gain = logits.gather(-1, cand).float() - logits.gather(-1, cur.unsqueeze(-1)).float()
        gain = gain.masked_fill(cand == cur.unsqueeze(-1), float("-inf"))
        token_gain, which = gain.max(dim=-1)                              # [N,L]
        proposal = cand.gather(-1, which.unsqueeze(-1)).squeeze(-1)       # [N,L]
        if grad is not None:
            token_gain = token_gain.masked_fill(token_gain <= 0, float("-inf"))
        order = token_gain.argsort(dim=-1, descending=True)               # [N,L]
        usable = torch.isfinite(token_gain).sum(-1)                      # [N]
        round_best = best_score.clone()
        round_idx = cur.clone()
        for m in grid:
            take = order[:, :m]
            allowed = torch.arange(m, device=cur.device).unsqueeze(0) < usable.unsqueeze(1)  # [N,m]
            trial = cur.clone()
            new_codes = proposal.gather(1, take)
            trial.scatter_(1, take, torch.where(allowed, new_codes, trial.gather(1, take)))
            s = critic(render(trial)).float().detach()
            decodes += 1
            better = s > round_best
            round_best = torch.where(better, s, round_best)
            round_idx = torch.where(better.unsqueeze(1), trial, round_idx)
        improved = round_best > best_score
        if not bool(improved.any()):
            break
        cur, best_score = round_idx, round_best
    changed = (cur != indices).sum(-1)
    return SteerResult(cur, start_score, best_score, changed, decodes, notes)
