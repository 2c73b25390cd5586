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
from typing import Any

import torch
from torch import nn

from distill.core.config import (
    Scalar,
    Schedule,
    Strict,
    positive_scalar,
    unit_scalar,
    validate_section,
)
from distill.core.errors import ConfigError, ModelError
from distill.losses.config import AttentionMapTerm, CETerm, Term, check_term_weights
from distill.losses.divergences import Kind
from distill.losses.terms import Outputs, scheduled
from distill.models.taps import Taps
from distill.models.zoo import logits_of


class _Terms(Strict):
    losses: list[Term]


class Method(nn.Module):
    """A weighted sum of terms; an `nn.Module` so that its adapters train and checkpoint with the student."""

    def __init__(self, terms: Sequence[Any], weight_keys: Sequence[str] | None = None):
        """`terms`: term settings (dicts or `distill.losses.config` terms); `weight_keys`: the config key
        that sets each term's weight, named by the loss-scale guard (default `losses[i].weight`;
        "-KEY" for a weight that falls as KEY rises)."""
        super().__init__()
        self.terms: list[Any] = _parse(terms)
        self.weight_keys = list(weight_keys or [f"losses[{i}].weight" for i in range(len(self.terms))])
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
        """Every setting of every term (the training fingerprint reads it: a changed setting is a new run)."""
        return ", ".join(repr(t.model_dump(mode="json")) for t in self.terms)

    def describe(self) -> str:
        """The sum as a person reads it, e.g. `0.5·kd(temperature=2.0) + 0.5·ce`."""
        def one(term: Any) -> str:
            settings = {k: v for k, v in term.model_dump(mode="json", exclude_defaults=True).items()
                        if k not in ("kind", "weight")}
            inside = ", ".join(f"{k}={v}" for k, v in settings.items())
            weight = term.weight if isinstance(term.weight, Schedule) else f"{float(term.weight):.3g}"
            return f"{weight}·{term.kind}" + (f"({inside})" if inside else "")
        return " + ".join(one(t) for t in self.terms)

    def term_names(self) -> list[str]:
        """Each term's name in the logs: its kind, or kind_i when the kind occurs more than once."""
        kinds = [t.kind for t in self.terms]
        return [k if kinds.count(k) == 1 else f"{k}_{i}" for i, k in enumerate(kinds)]

    def term_weights(self, progress: float) -> dict[str, tuple[float, str]]:
        """Each logged term's weight at `progress` and the config key that sets it."""
        return {name: (scheduled(term.weight, progress), key)
                for name, term, key in zip(self.term_names(), self.terms, self.weight_keys)}

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
        adapter = term.adapter(f"losses[{i}] ({term.kind})", s, t)
        if adapter is not None:
            self.adapters[str(i)] = adapter

    def _attention_terms(self) -> list[AttentionMapTerm]:
        return [t for t in self.terms if isinstance(t, AttentionMapTerm)]

    # ----------------------------------------------------------------------------------- loss

    def forward(self, student: Outputs | torch.Tensor, teacher: Outputs | torch.Tensor | None,
                targets: torch.Tensor, progress: float = 0.0) -> dict[str, torch.Tensor]:
        """The weighted sum ('loss') and every term's value under its name; `student` and `teacher` may be
        plain logits when no term reads layers."""
        s = student if isinstance(student, Outputs) else Outputs(student)
        t = teacher if isinstance(teacher, Outputs) or teacher is None else Outputs(teacher)
        parts: dict[str, torch.Tensor] = {}
        total = s.logits.new_zeros((), dtype=torch.float32)
        for i, (name, term) in enumerate(zip(self.term_names(), self.terms)):
            weight = scheduled(term.weight, progress)
            if weight == 0:
                continue
            if t is None and not isinstance(term, CETerm):
                raise ModelError(f"losses[{i}] ({term.kind}) needs the teacher; pass its logits or outputs.")
            parts[name] = term.value(s, t, targets, progress, self.adapters[str(i)] if str(i) in self.adapters
                                     else None)
            total = total + weight * parts[name]
        return {"loss": total, **parts}


def KD(temperature: Scalar = 4.0, ratio: Scalar = 0.9, divergence: Kind = "forward_kl", *, jsd_beta: float = 0.5,
       skew: float = 0.1) -> Method:
    """Soft targets (Hinton et al. 2015): ratio·T²·D(teacher_T ‖ student_T) + (1 − ratio)·CE on the labels,
    the two-term `Method`; temperature and ratio may be schedules."""
    try:
        positive_scalar(temperature, "KD(temperature=...)")
        unit_scalar(ratio, "KD(ratio=...)")
    except ValueError as exc:
        raise ConfigError(f"{exc} (got temperature={temperature!r}, ratio={ratio!r}).") from None
    kd = {"kind": "kd", "weight": ratio, "temperature": temperature, "divergence": divergence,
          "jsd_beta": jsd_beta, "skew": skew}
    return Method([kd, {"kind": "ce", "weight": _one_minus(ratio)}], weight_keys=["kd.ratio", "-kd.ratio"])


def CE() -> Method:
    """Plain supervised training on the labels: the no-teacher baseline, a one-term `Method`."""
    return Method([{"kind": "ce"}], weight_keys=[""])


def _one_minus(v: Scalar) -> Scalar:
    if isinstance(v, Schedule):
        return v.model_copy(update={"start": 1 - v.start, "end": 1 - v.end})
    return 1.0 - float(v)


# ----------------------------------------------------------------------------------- forwards


def collect(method: Method, model: nn.Module, inputs: torch.Tensor, *, teacher: bool,
            call: nn.Module | None = None) -> Outputs:
    """Run `model` (through `call`, e.g. its DDP wrapper, when given) and keep what `method` reads."""
    paths = method.teacher_paths if teacher else method.student_paths
    layers = method.teacher_layers if teacher else method.student_layers
    if not paths and not layers:  # logits only (KD, CE): no hooks to set up on every step
        return Outputs(logits_of((call or model)(inputs)))
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
