"""Rollout storage for on-policy learning: fixed-size tensors on the training device."""

from __future__ import annotations

import torch


class RolloutStorage:
    """`num_steps` transitions of `num_envs` envs; every tensor is `(num_steps, num_envs, ...)`."""

    def __init__(self, num_steps: int, num_envs: int, obs_dims: dict[str, int], action_dim: int, device):
        def zeros(*shape):
            return torch.zeros(num_steps, num_envs, *shape, device=device)

        self.num_steps, self.num_envs = num_steps, num_envs
        self.obs = {k: zeros(d) for k, d in obs_dims.items()}
        self.actions = zeros(action_dim)
        self.action_mean = zeros(action_dim)
        self.action_std = zeros(action_dim)
        self.log_prob = zeros()
        self.rewards = zeros()
        self.dones = zeros()
        self.values = zeros()
        self.returns = zeros()
        self.advantages = zeros()
        self.step = 0

    def add(self, obs, actions, action_mean, action_std, log_prob, values, rewards, dones) -> None:
        t = self.step
        for k, v in obs.items():
            self.obs[k][t] = v
        self.actions[t] = actions
        self.action_mean[t] = action_mean
        self.action_std[t] = action_std
        self.log_prob[t] = log_prob
        self.values[t] = values
        self.rewards[t] = rewards
        self.dones[t] = dones
        self.step += 1

    def compute_returns(self, last_values: torch.Tensor, gamma: float, lam: float) -> None:
        """Generalized advantage estimation (Schulman et al. 2016), backwards over the rollout."""
        advantage = torch.zeros_like(last_values)
        for t in reversed(range(self.num_steps)):
            next_values = last_values if t == self.num_steps - 1 else self.values[t + 1]
            not_done = 1.0 - self.dones[t]
            delta = self.rewards[t] + gamma * next_values * not_done - self.values[t]
            advantage = delta + gamma * lam * not_done * advantage
            self.advantages[t] = advantage
        self.returns = self.advantages + self.values
        self.advantages = (self.advantages - self.advantages.mean()) / (self.advantages.std() + 1e-8)

    def minibatches(self, num_minibatches: int, num_epochs: int, generator: torch.Generator, mirror=None):
        """Yield dicts of flat `(batch, ...)` tensors: shuffled, each sample once per epoch.

        All fields are packed side by side in one matrix so each minibatch is a single row gather.
        `mirror` (BatchedEnv.mirror: each group's column index and sign) adds every sample's mirror image,
        so each minibatch is twice as large: the mirrored observations, actions and action means, with
        the same returns, advantages and log-probability (a Gaussian's density is the same at the
        mirrored action under the mirrored mean), and `mirrored` (bool) telling the two apart.
        """
        n = self.num_steps * self.num_envs
        fields = {
            **{f"obs/{k}": v for k, v in self.obs.items()},
            "actions": self.actions,
            "action_mean": self.action_mean,
            "action_std": self.action_std,
            "log_prob": self.log_prob,
            "values": self.values,
            "returns": self.returns,
            "advantages": self.advantages,
        }
        columns = [v.reshape(n, -1) for v in fields.values()]
        packed = torch.cat(columns, dim=1)
        splits = [c.shape[1] for c in columns]
        if mirror is not None:
            packed = torch.cat((packed, _mirrored(packed, list(fields), splits, mirror)))
            fields["mirrored"] = torch.cat((torch.zeros(n), torch.ones(n))).to(packed)
            packed = torch.cat((packed, fields["mirrored"][:, None]), dim=1)
            splits.append(1)
            n *= 2
        size = n // num_minibatches
        for _ in range(num_epochs):
            perm = torch.randperm(n, generator=generator, device=self.actions.device)
            for i in range(num_minibatches):
                rows = packed.index_select(0, perm[i * size : (i + 1) * size])
                parts = rows.split(splits, dim=1)
                batch = {k: p if f.dim() > 2 else p.squeeze(1) for (k, f), p in zip(fields.items(), parts, strict=True)}
                if mirror is not None:
                    batch["mirrored"] = batch["mirrored"] > 0.5
                yield batch

    def clear(self) -> None:
        self.step = 0


def _mirrored(packed: torch.Tensor, names: list[str], widths: list[int], mirror) -> torch.Tensor:
    """The mirror image of every packed row: each field's columns by its group's (index, sign)."""
    groups = {"obs/policy": "policy", "obs/critic": "critic", "actions": "action", "action_mean": "action"}
    index, sign, start = [], [], 0
    for name, width in zip(names, widths, strict=True):
        if name in groups:
            i, s = mirror[groups[name]]
        elif name == "action_std":  # trades places, never changes sign
            i, s = mirror["action"][0], torch.ones_like(mirror["action"][1])
        else:
            i, s = torch.arange(width, device=packed.device), torch.ones(width, device=packed.device)
        index.append(i + start)
        sign.append(s)
        start += width
    return packed.index_select(1, torch.cat(index)) * torch.cat(sign)
