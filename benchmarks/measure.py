"""Measurement helpers shared by both benchmark workers (seqattr's and Inseq's): stdlib and torch only.

Both workers import this file from their own environment (Inseq runs in `.bench-venv/`, which has no
seqattr), so it must not import seqattr.

What is measured, and how:
- wall time: `time.perf_counter` around the whole ``attribute`` call (tokenization, attribution, output);
- forward passes: a forward pre-hook on the Hugging Face model counts calls, rows (batch entries) and
  positions (rows x sequence length, encoder and decoder together);
- time inside the model: forward hooks time each forward pass; for the backward pass, a gradient hook on
  the logits marks its start and gradient hooks on the input embeddings mark its end (batched backward
  passes, ``is_grads_batched``, fire each hook once). Everything else (the method's own work, Python,
  the LM head's softmax and the step function's gradient) counts as overhead;
- peak memory on CPU: the process's resident-set high-water mark (``VmHWM`` in ``/proc/self/status``),
  reset before the measured calls by writing 5 to ``/proc/self/clear_refs`` (Linux >= 4.0) after
  ``malloc_trim`` returned freed heap to the system. ``tracemalloc`` does not see torch's CPU tensors;
  RSS does, whatever allocator made them. Reported as the peak above the resident size just before the
  measured calls (the loaded model, imports and warm-up excluded);
- peak memory on CUDA: ``torch.cuda.max_memory_allocated`` (reset before the measured calls) above
  ``torch.cuda.memory_allocated`` at that moment: the tensors the attribution allocates on the device, the
  caching allocator's reserve excluded. Timings on CUDA synchronize the device around each call and each
  timed model pass (kernels run asynchronously, so a clock read without it measures the launch only).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import torch


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def rss_bytes() -> int:
    """The process's resident set size now."""
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    """The resident-set high-water mark since the process started or since `reset_peak_rss`."""
    return _status_kib("VmHWM") * 1024


def reset_peak_rss() -> int:
    """Return freed memory to the system and restart the high-water mark; returns the resident size now."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return rss_bytes()


def synchronize(device: str | torch.device | None) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously); nothing on CPU."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class ResidentMemory:
    """Peak memory on CPU: the resident-set high-water mark above the resident size at `reset`."""

    kind = "resident set (VmHWM) above the resident size before the measured calls"

    def reset(self) -> int:
        return reset_peak_rss()

    def peak(self) -> int:
        return peak_rss_bytes()


class CudaMemory:
    """Peak memory on a CUDA device: ``max_memory_allocated`` above ``memory_allocated`` at `reset`.

    Example:
        >>> memory = CudaMemory("cuda")                     # doctest: +SKIP
        >>> base = memory.reset(); run(); (memory.peak() - base) / 2**20   # MiB the run allocated on top
    """

    kind = "torch.cuda.max_memory_allocated above torch.cuda.memory_allocated before the measured calls"

    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)

    def reset(self) -> int:
        gc.collect()
        synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int:
        synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def memory_meter(device: str | torch.device | None) -> ResidentMemory | CudaMemory:
    """The peak-memory meter for where the model runs: CUDA's allocator statistics, else the resident set.

    Example:
        >>> type(memory_meter("cpu")).__name__, type(memory_meter(None)).__name__
        ('ResidentMemory', 'ResidentMemory')
    """
    if device is not None and torch.device(device).type == "cuda":
        return CudaMemory(device)
    return ResidentMemory()


@dataclass
class ModelCounters:
    """What the model did during the measured calls."""

    forward_calls: int = 0
    forward_rows: int = 0
    forward_positions: int = 0
    forward_s: float = 0.0
    backward_s: float = 0.0


class ModelProbe:
    """Hooks on a Hugging Face model that count and time its forward and backward passes.

    Example:
        >>> probe = ModelProbe(hf_model)                    # doctest: +SKIP
        >>> with probe.attached():
        ...     run()
        >>> probe.counters.forward_calls
    """

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None) -> None:
        self.model = model
        self.counters = ModelCounters()
        self._started: float | None = None
        self.device = device  # CUDA: each timed pass synchronizes, or it would time kernel launches only

    @staticmethod
    def _shape_of(kwargs: dict, args: tuple, names: tuple[str, ...]) -> tuple[int, int] | None:
        for name in names:
            value = kwargs.get(name)
            if isinstance(value, torch.Tensor):
                return value.shape[0], value.shape[1]
        if args and isinstance(args[0], torch.Tensor) and names[0] == "input_ids":
            return args[0].shape[0], args[0].shape[1]
        return None

    def _pre(self, module, args, kwargs):
        encoder = self._shape_of(kwargs, args, ("input_ids", "inputs_embeds"))
        decoder = self._shape_of(kwargs, (), ("decoder_input_ids", "decoder_inputs_embeds"))
        rows = (encoder or decoder or (0, 0))[0]
        self.counters.forward_calls += 1
        self.counters.forward_rows += rows
        self.counters.forward_positions += rows * sum(shape[1] for shape in (encoder, decoder) if shape)
        synchronize(self.device)
        self._started = time.perf_counter()

    def _post(self, module, args, kwargs, output):
        synchronize(self.device)
        self.counters.forward_s += time.perf_counter() - (self._started or time.perf_counter())
        logits = getattr(output, "logits", None)
        inputs = [kwargs.get(name) for name in ("inputs_embeds", "decoder_inputs_embeds")]
        inputs = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
        if not (
            torch.is_grad_enabled() and isinstance(logits, torch.Tensor) and logits.requires_grad and inputs
        ):
            return
        window: dict[str, float] = {}
        pending = [len(inputs)]
        handles = []

        def on_logits(grad):
            if "start" not in window:
                synchronize(self.device)
            window.setdefault("start", time.perf_counter())

        def on_input(grad):
            pending[0] -= 1
            if pending[0] == 0 and "start" in window:  # the last input gradient ends this backward pass
                synchronize(self.device)
                self.counters.backward_s += time.perf_counter() - window["start"]
                for handle in handles:
                    handle.remove()

        handles.append(logits.register_hook(on_logits))
        handles += [x.register_hook(on_input) for x in inputs]

    @contextlib.contextmanager
    def attached(self) -> Iterator[ModelCounters]:
        handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post, with_kwargs=True),
        ]
        try:
            yield self.counters
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class Measurement:
    """Medians over the measured repeats; counters are per call (they do not change between repeats)."""

    times_s: list[float]
    median_s: float
    peak_mb: float
    """Peak memory above the memory in use before the measured calls, in MiB (`memory_meter`: the resident
    set on CPU, CUDA's allocated bytes on a GPU)."""
    base_mb: float
    """Memory in use before the measured calls (model, imports, warm-up), in MiB."""
    forward_calls: int
    forward_rows: int
    forward_positions: int
    model_s: float
    """Median time inside the model's forward and backward passes."""
    overhead: float
    """Share of the median wall time spent outside the model's forward and backward passes."""
    backward_seen: bool
    """Whether backward passes through the model were timed (False for gradient-free methods)."""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def measure(
    run: Callable[[], object],
    model: torch.nn.Module,
    repeats: int,
    budget_s: float,
    device: str | torch.device | None = None,
) -> Measurement:
    """Call ``run`` up to ``repeats`` times (at least once; no new repeat once ``budget_s`` is spent).

    The caller warms up first (one-time costs such as lazy imports are not what is compared). ``device`` is
    where the model runs: on CUDA, each call is timed between device synchronizations and peak memory is
    CUDA's allocator statistics (`memory_meter`).
    """
    probe = ModelProbe(model, device)
    memory = memory_meter(device)
    base = memory.reset()
    times, model_times, per_call = [], [], None
    spent = 0.0
    with probe.attached() as counters:
        for _ in range(repeats):
            before = asdict(counters)
            synchronize(device)
            started = time.perf_counter()
            run()
            synchronize(device)
            elapsed = time.perf_counter() - started
            after = asdict(counters)
            delta = {key: after[key] - before[key] for key in after}
            per_call = per_call or delta
            times.append(elapsed)
            model_times.append((delta["forward_s"] + delta["backward_s"], delta["backward_s"] > 0))
            spent += elapsed
            if spent >= budget_s:
                break
    peak = memory.peak()
    median = statistics.median(times)
    model_s = statistics.median(t for t, _ in model_times)
    return Measurement(
        times_s=times,
        median_s=median,
        peak_mb=(peak - base) / 2**20,
        base_mb=base / 2**20,
        forward_calls=per_call["forward_calls"],
        forward_rows=per_call["forward_rows"],
        forward_positions=per_call["forward_positions"],
        model_s=model_s,
        overhead=max(0.0, 1 - model_s / median),
        backward_seen=all(seen for _, seen in model_times),
        extra={"memory": memory.kind, "device": str(device or "cpu")},
    )


def serve(runs: list[dict], result_path: str, execute: Callable[[dict], dict]) -> None:
    """Run each configuration with ``execute`` and append one JSON line per run to ``result_path``.

    A ``{"started": id}`` line precedes each run, so that the driver can tell which run a timeout hit and
    restart the worker on the runs after it; a run that raises is recorded with its error.
    """
    import json
    import traceback

    with open(result_path, "a") as out:
        for run in runs:
            out.write(json.dumps({"started": run["id"], "time": time.time()}) + "\n")
            out.flush()
            try:
                result = execute(run)
            except Exception as error:  # recorded, and the worker goes on with the next run
                lines = traceback.format_exception_only(type(error), error)
                result = {"error": " ".join(line.strip() for line in lines)[-500:]}
            out.write(json.dumps({"id": run["id"], **result}) + "\n")
            out.flush()
