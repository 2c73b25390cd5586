"""Methods declared in config: a weighted sum of loss terms over logits, tapped layers and attention maps.

    method = Method([{"kind": "kd", "weight": 0.9, "temperature": 4},
                     {"kind": "ce", "weight": 0.1},
                     {"kind": "hint", "student": "features.2", "teacher": "features.2"}])
    fit(student, data, objective=method, teacher=LiveTeacher(teacher), ...)

A method is data plus a loss: each term names what it reads (logits, a layer by module path, or
attention maps) and `fit` collects exactly that from one forward of each model. Before training,
`bind` runs one dry forward of each model to learn the tapped shapes and builds the adapters that
map student features to the teacher's width; they are trained with the student and kept apart from
it, so the exported student is the plain model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distill.core.config import Strict, validate_section
from distill.core.errors import ConfigError, ModelError
from distill.losses.config import (
    AttentionMapTerm,
    AttentionTransferTerm,
    CETerm,
    ContrastiveTerm,
    DKDTerm,
    HintTerm,
    KDTerm,
    RKDTerm,
    Term,
    check_term_weights,
)
from distill.losses.terms import (
    attention_map_loss,
    attention_transfer,
    contrastive_kd,
    cross_entropy,
    dkd,
    hint_loss,
    rkd_angle,
    rkd_distance,
    scheduled,
    soft_target_kl,
)
from distill.models.taps import Taps, make_adapter
from distill.models.zoo import logits_of


class _Terms(Strict):
    losses: list[Term]


@dataclass
class Outputs:
    """What one forward pass of a model produced for the method: logits, tapped layers, attention maps."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    attentions: dict[int, torch.Tensor] = field(default_factory=dict)

    def read(self, path: str | None) -> torch.Tensor:
        return self.logits if path is None else self.features[path]


class Method(nn.Module):
    """A weighted sum of terms; an `nn.Module` so that its adapters train and checkpoint with the student."""

    def __init__(self, terms: Sequence[Any]):
        super().__init__()
        self.terms: list[Any] = _parse(terms)
        self.adapters = nn.ModuleDict()
        self.needs_teacher = any(not isinstance(t, CETerm) for t in self.terms)
        self.student_paths = _unique(getattr(t, "student", None) for t in self.terms)
        self.teacher_paths = _unique(getattr(t, "teacher", None) for t in self.terms)
        self.student_layers = _unique(i for t in self._attention_terms() for i, _ in t.layers)
        self.teacher_layers = _unique(j for t in self._attention_terms() for _, j in t.layers)

    @property
    def reads_layers(self) -> bool:
        """Whether the teacher must run live (a logit cache holds neither layers nor attention maps)."""
        return bool(self.teacher_paths or self.teacher_layers)

    def extra_repr(self) -> str:
        return ", ".join(f"{t.kind}×{t.weight}" for t in self.terms)

    def term_names(self) -> list[str]:
        """Each term's name in the logs: its kind, or kind_i when the kind occurs more than once."""
        kinds = [t.kind for t in self.terms]
        return [k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds)]

    def term_weights(self, progress: float) -> dict[str, tuple[float, str]]:
        """Each logged term's weight at `progress` and the config key that sets it."""
        return {name: (scheduled(term.weight, progress), f"losses[{i}].weight")
                for i, (name, term) in enumerate(zip(self.term_names(), self.terms))}

    # ----------------------------------------------------------------------------------- setup

    def bind(self, student: nn.Module, teacher: nn.Module | None, sample: torch.Tensor, seed: int = 0) -> None:
        """Check every path and shape with one dry forward of each model, then build the adapters."""
        s = dry_run(self, student, sample, teacher=False)
        t = dry_run(self, teacher, sample, teacher=True) if teacher is not None and self.needs_teacher else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i, term in enumerate(self.terms):
                if t is not None:
                    self._check_term(i, term, s, t)
        self.to(s.logits.device)

    def _check_term(self, i: int, term: Any, s: Outputs, t: Outputs) -> None:
        where = f"losses[{i}] ({term.kind})"
        if isinstance(term, HintTerm):
            shape_s, shape_t = tuple(s.read(term.student).shape), tuple(t.read(term.teacher).shape)
            self.adapters[str(i)] = make_adapter(shape_s, shape_t, where)
        elif isinstance(term, ContrastiveTerm):
            width_s, width_t = s.read(term.student)[0].numel(), t.read(term.teacher)[0].numel()
            self.adapters[str(i)] = nn.Linear(width_s, width_t, bias=False) if width_s != width_t else nn.Identity()
        elif isinstance(term, AttentionTransferTerm):
            shape_s, shape_t = s.read(term.student).shape, t.read(term.teacher).shape
            if len(shape_s) != 4 or len(shape_t) != 4 or shape_s[2:] != shape_t[2:]:
                raise ModelError(f"{where}: attention transfer compares (B, C, H, W) maps of the same H×W; got "
                                 f"student {tuple(shape_s)} and teacher {tuple(shape_t)}. Tap layers at the same "
                                 "resolution (channel counts may differ).")
        elif isinstance(term, AttentionMapTerm):
            for a, b in term.layers:
                if s.attentions[a].shape[-1] != t.attentions[b].shape[-1]:
                    raise ModelError(f"{where}: student layer {a} and teacher layer {b} attend over different "
                                     "lengths; feed both models the same tokenization.")
        elif isinstance(term, (KDTerm, DKDTerm)) and s.logits.shape[-1] != t.logits.shape[-1]:
            raise ModelError(f"{where}: the student predicts {s.logits.shape[-1]} classes and the teacher "
                             f"{t.logits.shape[-1]}; logit distillation needs the same label space.")

    def _attention_terms(self) -> list[AttentionMapTerm]:
        return [t for t in self.terms if isinstance(t, AttentionMapTerm)]

    # ----------------------------------------------------------------------------------- loss

    def forward(self, student: Outputs, teacher: Outputs | None, targets: torch.Tensor,
                progress: float = 0.0) -> dict[str, torch.Tensor]:
        """The weighted sum ('loss') and every term's value under its kind's name."""
        parts: dict[str, torch.Tensor] = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        for i, (name, term) in enumerate(zip(self.term_names(), self.terms)):
            weight = scheduled(term.weight, progress)
            if weight == 0:
                continue
            value = self._term(i, term, student, teacher, targets, progress)
            parts[name] = value
            total = total + weight * value
        return {"loss": total, **parts}

    def _term(self, i: int, term: Any, s: Outputs, t: Outputs | None, targets: torch.Tensor,
              progress: float) -> torch.Tensor:
        if isinstance(term, CETerm):
            return cross_entropy(s.logits, targets)
        assert t is not None, f"losses[{i}] ({term.kind}) needs the teacher"
        if isinstance(term, KDTerm):
            return soft_target_kl(s.logits, t.logits, scheduled(term.temperature, progress))
        if isinstance(term, DKDTerm):
            hard = targets.argmax(1) if targets.dim() == 2 else targets  # mixup gives class probabilities
            if targets.dim() == 2:
                hard = torch.where(targets.sum(1) > 0, hard, -1)  # an all-zero row: unlabelled
            return dkd(s.logits, t.logits, hard, alpha=term.alpha, beta=term.beta, temperature=term.temperature)
        if isinstance(term, AttentionMapTerm):
            pairs = [attention_map_loss(s.attentions[a], t.attentions[b], term.loss) for a, b in term.layers]
            return torch.stack(pairs).mean()
        fs, ft = s.read(term.student), t.read(term.teacher)
        if isinstance(term, HintTerm):
            return hint_loss(self.adapters[str(i)](fs), ft, term.loss)
        if isinstance(term, AttentionTransferTerm):
            return attention_transfer(fs, ft, term.p)
        if isinstance(term, RKDTerm):
            return term.distance * rkd_distance(fs, ft) + term.angle * rkd_angle(fs, ft)
        if isinstance(term, ContrastiveTerm):
            return contrastive_kd(self.adapters[str(i)](fs.flatten(1)), ft, term.temperature)
        raise AssertionError(f"unhandled term {term.kind}")


# ----------------------------------------------------------------------------------- forwards


def collect(method: Method, model: nn.Module, inputs: torch.Tensor, *, teacher: bool,
            call: nn.Module | None = None) -> Outputs:
    """Run `model` (through `call`, e.g. its DDP wrapper, when given) and keep what `method` reads."""
    paths = method.teacher_paths if teacher else method.student_paths
    layers = method.teacher_layers if teacher else method.student_layers
    kwargs = {"output_attentions": True} if layers else {}
    with Taps(model, paths, "losses[].teacher" if teacher else "losses[].student") as taps:
        out = (call or model)(inputs, **kwargs)
    return Outputs(logits_of(out), dict(taps.outputs), _attentions(out, layers, model) if layers else {})


@torch.no_grad()
def dry_run(method: Method, model: nn.Module, sample: torch.Tensor, *, teacher: bool) -> Outputs:
    """`collect` once in eval mode (train mode restored), naming paths that never ran."""
    was_training = model.training
    model.eval()
    try:
        out = collect(method, model, sample, teacher=teacher)
    except ConfigError as exc:  # a path that is no module: perhaps a key of the model's output
        keys = _output_keys(model, sample)
        if keys is None:
            raise
        raise ConfigError(f"{exc} Its forward returns a mapping with the keys {keys}.") from None
    finally:
        model.train(was_training)
    paths = method.teacher_paths if teacher else method.student_paths
    missing = [p for p in paths if p not in out.features]
    if missing:
        raise ModelError(f"{'teacher' if teacher else 'student'} module(s) {', '.join(missing)} did not run in a "
                         f"forward pass of {type(model).__name__}; tap modules that forward() calls.")
    return out


@torch.no_grad()
def _output_keys(model: nn.Module, sample: torch.Tensor) -> list[str] | None:
    """The keys of what `model` returns, when it returns a mapping (a dict, a model-output object)."""
    out = model(sample)
    return sorted(out.keys()) if isinstance(out, dict) or callable(getattr(out, "keys", None)) else None


def _attentions(output: Any, layers: list[int], model: nn.Module) -> dict[int, torch.Tensor]:
    maps = output.get("attentions") if isinstance(output, dict) else getattr(output, "attentions", None)
    name = type(model).__name__
    if not maps or any(m is None for m in maps):
        raise ModelError(
            f"attention_maps: {name} returned no attention maps. Its forward must accept output_attentions=True "
            "and return them as `.attentions` (one (B, heads, L, L) tensor per layer). For Hugging Face models, "
            "load with attn_implementation=\"eager\" (SDPA and flash attention do not compute the weights).")
    if max(layers) >= len(maps):
        raise ConfigError(f"attention_maps: layer {max(layers)} asked of {name}, which has {len(maps)} "
                          f"attention layers (0…{len(maps) - 1}).")
    return {i: maps[i] for i in layers}


def _parse(terms: Sequence[Any]) -> list[Any]:
    if not terms:
        raise ConfigError("losses: a method needs at least one term, e.g. [{kind: kd}, {kind: ce}].")
    parsed = validate_section(_Terms, {"losses": list(terms)}, "method").losses
    try:
        check_term_weights(parsed)
    except ValueError as exc:
        raise ConfigError(f"{exc}.") from None
    return parsed


def _unique(values: Any) -> list[Any]:
    return sorted({v for v in values if v is not None})
