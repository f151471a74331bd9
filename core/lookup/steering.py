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
from typing import Callable, Mapping, Optional

import torch

from ...models.codebook import CodebookModel
from .options import SteerOptions

Critic = Callable[[torch.Tensor], torch.Tensor]
NO_GRADIENT_NOTE = "critic has no gradients; candidates ranked by logit margin"


@dataclass
class CodeBatch:
    """One batch of a lookup as steering sees it: the model's latent, its logits and top-1 codes."""

    model: CodebookModel
    lq_feat: torch.Tensor
    skips: Mapping[str, torch.Tensor]
    logits: torch.Tensor                   # [N, L, K]
    indices: torch.Tensor                  # [N, L]
    fidelity: float

    def render(self, idx: torch.Tensor, raw: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Codes (or their vectors ``raw``) -> faces [N,3,S,S] in 0..1."""
        raw = self.model.code_features(idx) if raw is None else raw
        out = self.model.decode(self.model.finish_quantize(raw, self.lq_feat), self.skips, self.fidelity)
        return ((out.float() + 1) / 2).clamp(0, 1)


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


def steer(batch: CodeBatch, critic: Critic, strength: float, options: SteerOptions = SteerOptions()) -> SteerResult:
    """Steered code indices for a batch (strength > 0)."""
    grid = budget_grid(strength, batch.logits.shape[1], options.max_fraction, options.grid_factor)
    cand, cand_feats = _candidates(batch, options.top_k)
    cur = batch.indices.clone()
    start_score = best_score = None
    decodes, notes = 0, []
    for _ in range(max(1, int(options.rounds))):
        score, raw, grad = _scored(batch, cur, critic)
        decodes += 1
        if start_score is None:
            start_score, best_score = score.clone(), score.clone()
        if grad is None and NO_GRADIENT_NOTE not in notes:
            notes.append(NO_GRADIENT_NOTE)
        proposals = _proposals(batch, cand, cand_feats, cur, raw, grad)
        round_best, round_idx = _try_grid(batch, critic, grid, cur, proposals, best_score)
        decodes += len(grid)
        if not bool((round_best > best_score).any()):
            break
        cur, best_score = round_idx, round_best
    changed = (cur != batch.indices).sum(-1)
    return SteerResult(cur, start_score, best_score, changed, decodes, notes)


def _candidates(batch: CodeBatch, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k codes [N,L,k] and their vectors [N,L,k,C]."""
    logits = batch.logits
    tokens, k_all = logits.shape[1:]
    k = max(1, min(int(top_k), k_all))
    cand = logits.topk(k, dim=-1).indices
    books = batch.model.codebooks                                          # [G,K,C]
    group = torch.div(torch.arange(tokens, device=logits.device), tokens // books.shape[0], rounding_mode="floor")
    return cand, books[group.view(1, -1, 1).expand_as(cand), cand]


def _scored(batch: CodeBatch, cur: torch.Tensor, critic: Critic):
    """(critic score [N], the code vectors, the score's gradient there or None)."""
    with torch.enable_grad():
        raw = batch.model.code_features(cur).detach().float().requires_grad_(True)
        score = critic(batch.render(cur, raw)).float()
        grad = None
        if score.requires_grad:
            grad = torch.autograd.grad(score.sum(), raw)[0]
    return score.detach(), raw, grad


def _proposals(batch: CodeBatch, cand, cand_feats, cur, raw, grad):
    """Each token's best swap (first-order gain ``g_t . (e_c - e_cur)``), tokens ranked by gain, and how many
    tokens of each face have a usable swap."""
    if grad is not None:
        gain = ((cand_feats.float() - raw.detach().unsqueeze(2)) * grad.unsqueeze(2)).sum(-1)   # [N,L,k]
    else:  # critic without gradients: try the least unlikely alternatives first
        logits = batch.logits
        gain = logits.gather(-1, cand).float() - logits.gather(-1, cur.unsqueeze(-1)).float()
    gain = gain.masked_fill(cand == cur.unsqueeze(-1), float("-inf"))
    token_gain, which = gain.max(dim=-1)                              # [N,L]
    proposal = cand.gather(-1, which.unsqueeze(-1)).squeeze(-1)       # [N,L]
    if grad is not None:
        token_gain = token_gain.masked_fill(token_gain <= 0, float("-inf"))
    order = token_gain.argsort(dim=-1, descending=True)               # [N,L]
    usable = torch.isfinite(token_gain).sum(-1)                      # [N]
    return proposal, order, usable


def _try_grid(batch: CodeBatch, critic: Critic, grid: list[int], cur, proposals, best_score):
    """Apply the best m proposals for every m of the grid; each face keeps its best-scoring candidate."""
    proposal, order, usable = proposals
    round_best = best_score.clone()
    round_idx = cur.clone()
    for m in grid:
        take = order[:, :m]
        allowed = torch.arange(m, device=cur.device).unsqueeze(0) < usable.unsqueeze(1)  # [N,m]
        trial = cur.clone()
        new_codes = proposal.gather(1, take)
        trial.scatter_(1, take, torch.where(allowed, new_codes, trial.gather(1, take)))
        s = critic(batch.render(trial)).float().detach()
        better = s > round_best
        round_best = torch.where(better, s, round_best)
        round_idx = torch.where(better.unsqueeze(1), trial, round_idx)
    return round_best, round_idx


__all__ = ["CodeBatch", "Critic", "SteerResult", "budget_grid", "steer"]
