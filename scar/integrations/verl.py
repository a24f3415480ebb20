"""verl drop-in for dense credit: a reward manager whose per-token rows become PPO's ``token_level_scores``,
and a per-token group advantage estimator.

Two pieces, registered with verl when this module is imported. The package declares this module under the
``verl.plugins`` entry-point group, and ``import verl`` imports every module of that group, so both names
exist in every process of a verl run (driver, task runner, reward-loop workers) without any user import:

* :class:`SCARRewardManager`, reward manager ``"scar"``. Each reward-loop worker process loads the reward
  model and the credit settings once (:meth:`SCARRewardManager.init_class`, from the config section
  ``reward.scar``, :class:`VerlCreditConfig`). verl calls :meth:`~SCARRewardManager.run_single` once per row
  and concurrently; the calls that arrive within ``batch_window_s`` of each other, up to ``batch_size`` of
  them, are scored together in ONE :class:`~scar.credit.rewarder.SCAR` call (one packed forest) run in a
  worker thread, and each caller gets its own row. :meth:`~SCARRewardManager.assemble_rm_scores` writes
  the rows into ``rm_scores`` ``[B, T_resp]`` on the policy's response tokens.
* :func:`compute_scar_grpo_advantage`, advantage estimator ``"scar_grpo"``: per-token GRPO advantages
  (:func:`scar.credit.advantages.dense_group_advantages`: returns-to-go minus the group's per-position
  baseline), grouping rows by their ``uid`` values, in whatever order verl holds them.

Which verl path carries dense rows (verl 0.9.1). ``assemble_rm_scores`` is called in one place,
``RewardLoopManager.compute_rm_score`` (``verl/experimental/reward_loop/reward_loop.py``, line 362), and the
trainers call that only on the *colocated reward-model* path: ``reward.reward_model.enable=True`` with
``reward.reward_model.enable_resource_pool=False``, where ``RewardLoopManager.reward_loop_worker_handles`` is
None (``reward_loop.py`` lines 320-322), so the agent loop does not score rollouts and the trainer calls
``_compute_reward_colocate`` (v1 trainer, the default: ``verl/trainer/ppo/v1/trainer_base.py`` lines 577-579
and 1529-1580; legacy trainer: ``verl/trainer/ppo/ray_trainer.py`` lines 1563-1565). ``rm_scores`` then
becomes ``token_level_scores`` unchanged (``trainer_base.py`` line 1750; ``ray_trainer.py`` line 1633).
On that path a worker calls ``run_single`` only when ``reward.custom_reward_function.path`` is set
(``reward_loop.py`` lines 146-153); otherwise it asks the reward model's inference server for one scalar.
:func:`compute_score` of this module is the function to name there. On every other path (no reward model,
or a reward model in its own resource pool) the agent loop stores one scalar per trajectory
(``AgentLoopOutput.reward_score: Optional[float]``, ``verl/experimental/agent_loop/agent_loop.py`` lines
103 and 143-148), which cannot hold a row; the manager refuses those configurations when it is built.

The colocated path also starts verl's inference server for ``reward.reward_model.model_path``
(``RewardModelManager``, ``reward_loop.py`` line 302), which SCAR does not use: SCAR's reward model lives in
each reward-loop worker process (``reward.num_workers`` Ray actors that request no GPU), on
:attr:`VerlCreditConfig.device`.

Tested with verl 0.9.1 (``VERL_TESTED_RANGE``): the manager follows verl's reward-manager interface
(``RewardManagerBase``) and the advantage-estimator registry (``register_adv_est``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar

import numpy as np
import torch

from scar._checks import as_real, check_choice
from scar.credit.advantages import BASELINES, SCALE_REWARDS, STD_OF, dense_group_advantages
from scar.credit.config import CreditConfig
from scar.credit.rewarder import SCAR
from scar.game.tokens import as_token_ids
from scar.scoring import ScorerConfig

VERL_TESTED_RANGE = (">=0.9.1", "<0.10")
_VERL_MIN = (0, 9, 1)
_VERL_BELOW = (0, 10)


def _check_verl_version() -> str:
    """Return the installed verl version; ImportError without verl, a warning outside the tested range."""
    try:
        version = metadata.version("verl")
    except metadata.PackageNotFoundError:
        raise ImportError(
            "scar.integrations.verl needs verl: pip install 'verl==0.9.1' (tested with verl>=0.9.1,<0.10)"
        ) from None
    try:
        parts = tuple(int(p) for p in version.split("+")[0].split(".")[:3])
    except ValueError:
        parts = None
    if parts is None or not (parts >= _VERL_MIN and parts[:2] < _VERL_BELOW):
        warnings.warn(
            f"scar.integrations.verl is tested with verl{','.join(VERL_TESTED_RANGE)} but verl {version} is "
            "installed; the reward-loop path that carries dense rows may have changed",
            UserWarning,
            stacklevel=3,
        )
    return version


VERL_VERSION = _check_verl_version()

# after the version check: a missing verl fails with the message above
from omegaconf import DictConfig, ListConfig, OmegaConf  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase  # noqa: E402
from verl.experimental.reward_loop.reward_manager.registry import register  # noqa: E402
from verl.trainer.ppo.core_algos import register_adv_est  # noqa: E402

__all__ = [
    "ADV_ESTIMATOR_NAME",
    "CONFIG_SECTION",
    "REWARD_MANAGER_NAME",
    "SCARRewardManager",
    "ScarGRPOConfig",
    "VERL_TESTED_RANGE",
    "VERL_VERSION",
    "VerlCreditConfig",
    "compute_scar_grpo_advantage",
    "compute_score",
]

REWARD_MANAGER_NAME = "scar"
"""``reward.reward_manager.name`` of :class:`SCARRewardManager`."""
ADV_ESTIMATOR_NAME = "scar_grpo"
"""``algorithm.adv_estimator`` of :func:`compute_scar_grpo_advantage`."""
CONFIG_SECTION = "scar"
"""The manager's settings live in ``reward.scar`` (and the estimator's in ``algorithm.scar_grpo``)."""

PROMPT_SOURCES = ("text", "chat", "ids")
"""How the reward model's prompt is built from a row (:attr:`VerlCreditConfig.prompt`)."""
SUFFIXES = ("eos", "none")
"""Named suffixes (:attr:`VerlCreditConfig.suffix`)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The reward model's dtypes (:attr:`VerlCreditConfig.dtype`)."""

_HEAD_PREFIXES = ("score.", "classifier.", "pre_classifier.")
_SCORER_FIELDS = frozenset(f.name for f in dataclasses.fields(ScorerConfig))
_SETTING_DEFAULTS: dict[str, Any] = {"seed": 0, "progress": False}


def _plain(value: Any) -> Any:
    """OmegaConf containers as plain dicts and lists (resolved); anything else unchanged."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _get(config: Any, path: str, default: Any = None) -> Any:
    """``config.a.b.c`` for ``path="a.b.c"`` in a DictConfig, a mapping or an object; ``default`` if absent."""
    node = config
    for key in path.split("."):
        if node is None:
            return default
        if isinstance(node, (Mapping, DictConfig)):
            node = node.get(key, None)
        else:
            node = getattr(node, key, None)
    return default if node is None else node


@dataclass
class VerlCreditConfig:
    """The ``reward.scar`` section: where the reward model is and how its dense credit is computed.

    Every key of the section that is not a field below is a setting of :class:`~scar.credit.rewarder.SCAR`
    (a field of :class:`~scar.credit.config.CreditConfig` or :class:`~scar.scoring.ScorerConfig`:
    ``players``, ``method``, ``budget``, ``alpha``, ``seed``, ``batch_size``, ``backend``, ...) and goes to
    :attr:`settings`; :meth:`from_section` splits them.

    Args:
        model_path: the reward model (a ``*ForSequenceClassification`` checkpoint, local or remote as verl's
            ``copy_to_local`` reads it); None: ``reward.reward_model.model_path``.
        tokenizer_path: its fast tokenizer; None: ``model_path``.
        prompt: how the reward model's prompt is built from a row. ``"text"`` (default): the row's prompt
            ids (the policy's tokens, attention mask applied) decoded by the policy tokenizer without
            special tokens, then encoded by the reward model's tokenizer with its special tokens.
            ``"chat"``: the reward model tokenizer's chat template over the row's ``raw_prompt`` messages,
            with the generation prompt, and without a leading BOS text when the tokenizer adds BOS itself.
            ``"ids"``: the row's prompt ids themselves (the policy and the reward model share a vocabulary).
        suffix: what the reward model reads after each response: ``"eos"`` (its tokenizer's EOS; default),
            ``"none"``, or a list of its token ids (e.g. the end-of-turn tokens of its chat template).
        device: the torch device of the reward model in each reward-loop worker process.
        dtype: ``"float32"`` (default), ``"bfloat16"`` or ``"float16"``.
        trust_remote_code: passed to ``from_pretrained``.
        batch_window_s: how long (seconds) a row waits for other rows to share its SCAR call; a call
            starts earlier when ``batch_size`` rows are waiting.
        settings: the SCAR settings. ``seed`` defaults to 0 here (each response's sampling is drawn from
            ``(seed, prompt ids, response ids)``, so a row's credit does not depend on the worker that
            scores it nor on the rows it shares a call with) and ``progress`` to False. ``suffix_ids`` is
            refused (use :attr:`suffix`), as are settings that are not plain values.
    """

    model_path: str | None = None
    tokenizer_path: str | None = None
    prompt: str = "text"
    suffix: str | Sequence[int] = "eos"
    device: str = "cpu"
    dtype: str = "float32"
    trust_remote_code: bool = False
    batch_window_s: float = 0.01
    settings: dict[str, Any] = field(default_factory=dict)

    OWN_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"model_path", "tokenizer_path", "prompt", "suffix", "device", "dtype", "trust_remote_code", "batch_window_s"}
    )

    def __post_init__(self) -> None:
        for name in ("model_path", "tokenizer_path"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise TypeError(f"{name} must be a non-empty str or None, got {value!r}")
        check_choice(self.prompt, "prompt", PROMPT_SOURCES)
        self.suffix = _plain(self.suffix)
        if isinstance(self.suffix, str):
            check_choice(self.suffix, "suffix", SUFFIXES)
        else:
            self.suffix = as_token_ids(self.suffix, "suffix")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str, got {type(self.device).__name__}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError) as err:
            raise ValueError(f"device {self.device!r} is not a torch device: {err}") from None
        check_choice(self.dtype, "dtype", tuple(DTYPES))
        if not isinstance(self.trust_remote_code, bool):
            raise TypeError(f"trust_remote_code must be a bool, got {type(self.trust_remote_code).__name__}")
        self.batch_window_s = as_real(self.batch_window_s, "batch_window_s")
        if not (math.isfinite(self.batch_window_s) and self.batch_window_s >= 0):
            raise ValueError(f"batch_window_s must be a finite number >= 0, got {self.batch_window_s}")
        settings = _plain(self.settings)
        if not isinstance(settings, Mapping):
            raise TypeError(f"settings must be a mapping, got {type(settings).__name__}")
        self.settings = {**_SETTING_DEFAULTS, **settings}
        known = CreditConfig.field_names() | _SCORER_FIELDS
        unknown = sorted(set(self.settings) - known)
        if unknown:
            raise TypeError(
                f"reward.{CONFIG_SECTION} has unknown keys {unknown}; it takes {sorted(self.OWN_FIELDS)} and the "
                f"SCAR settings {sorted(known - {'suffix_ids'})}"
            )
        if "suffix_ids" in self.settings:
            raise ValueError(f"reward.{CONFIG_SECTION}.suffix_ids is not a key: give the suffix as 'suffix'")
        for key, value in self.settings.items():
            if callable(value) or isinstance(value, (Mapping, bytes)):
                raise TypeError(f"reward.{CONFIG_SECTION}.{key} must be a plain value, got {type(value).__name__}")
        # the settings are checked here, where the config enters, not in each worker at load time
        CreditConfig(**self.credit_settings)
        ScorerConfig(**self.scorer_settings)

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | DictConfig | None) -> VerlCreditConfig:
        """The config of a ``reward.scar`` section: its own fields, every other key a SCAR setting."""
        section = _plain(section) if section is not None else {}
        if not isinstance(section, Mapping):
            raise TypeError(f"reward.{CONFIG_SECTION} must be a mapping, got {type(section).__name__}")
        own = {k: v for k, v in section.items() if k in cls.OWN_FIELDS}
        return cls(**own, settings={k: v for k, v in section.items() if k not in cls.OWN_FIELDS})

    @property
    def credit_settings(self) -> dict[str, Any]:
        """The settings that are :class:`~scar.credit.config.CreditConfig` fields."""
        return {k: v for k, v in self.settings.items() if k in CreditConfig.field_names()}

    @property
    def scorer_settings(self) -> dict[str, Any]:
        """The settings that are :class:`~scar.scoring.ScorerConfig` fields."""
        return {k: v for k, v in self.settings.items() if k in _SCORER_FIELDS}

    def key(self) -> str:
        """A string that identifies these settings (the per-process cache of loaded reward models)."""
        return repr((dataclasses.astuple(self)[:-1], sorted(self.settings.items())))


def compute_score(*args: Any, **kwargs: Any) -> Any:
    """The function to name in ``reward.custom_reward_function`` (``path=pkg://scar.integrations.verl``,
    ``name=compute_score``) so that verl's reward-loop workers call ``run_single`` on the colocated
    reward-model path instead of asking the inference server for a scalar. :class:`SCARRewardManager` never
    calls it; any other caller gets a RuntimeError.
    """
    raise RuntimeError(
        "scar.integrations.verl.compute_score is not a reward function: it only routes verl's colocated reward "
        f"path to the '{REWARD_MANAGER_NAME}' reward manager (set reward.reward_manager.name={REWARD_MANAGER_NAME})"
    )


def check_colocated_route(config: Any) -> None:
    """ValueError unless ``config`` routes scoring through ``run_single`` and ``assemble_rm_scores``.

    The three keys and why (verl 0.9.1): ``reward.reward_model.enable=True`` and
    ``reward.reward_model.enable_resource_pool=False`` make the trainer score the batch with
    ``RewardLoopManager.compute_rm_score`` (the only caller of ``assemble_rm_scores``) instead of the agent
    loop storing one scalar per trajectory; ``reward.custom_reward_function.path`` makes its workers call
    ``run_single`` instead of the reward model's inference server.
    """
    problems = []
    if not _get(config, "reward.reward_model.enable", False):
        problems.append("reward.reward_model.enable=True (without it the agent loop stores one scalar per trajectory)")
    if _get(config, "reward.reward_model.enable_resource_pool", False):
        problems.append(
            "reward.reward_model.enable_resource_pool=False (a separate pool makes the agent loop score "
            "rollouts, one scalar per trajectory)"
        )
    if _get(config, "reward.custom_reward_function.path") is None:
        problems.append(
            "reward.custom_reward_function.path=pkg://scar.integrations.verl and "
            "reward.custom_reward_function.name=compute_score (without a custom reward function verl's workers "
            "ask the reward model's inference server for a scalar and never call this manager)"
        )
    if problems:
        raise ValueError(
            f"the '{REWARD_MANAGER_NAME}' reward manager's per-token rows reach token_level_scores only on verl's "
            "colocated reward-model path; set " + "; ".join(problems)
        )


@dataclass(frozen=True)
class _Row:
    """One row to score: the reward model's prompt, the response text and the policy's response ids."""

    prompt: str | list[int]
    response: str
    completion_ids: list[int]


@dataclass(frozen=True)
class _Scored:
    token_rewards: list[float]
    reward: float
    base_value: float


class _Loaded:
    """What a process loads once per settings: the SCAR rewarder and the one thread that runs it."""

    def __init__(self, credit: SCAR, settings: VerlCreditConfig, policy_tokenizer: Any) -> None:
        self.credit = credit
        self.settings = settings
        self.policy_tokenizer = policy_tokenizer  # kept alive: the cache key holds its id
        # one SCAR call at a time per process: SCAR keeps per-call state (last_stats, scorer stats)
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scar-credit")
        self.bos_text = self._bos_text(credit.tokenizer)

    @staticmethod
    def _bos_text(tokenizer: Any) -> str | None:
        """The BOS text the tokenizer adds when encoding with special tokens, else None."""
        bos_id, bos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "bos_token", None)
        if bos_id is None or not bos:
            return None
        ids = tokenizer("x", add_special_tokens=True)["input_ids"]
        return bos if ids and ids[0] == bos_id else None

    def score(self, rows: list[_Row]) -> list[_Scored]:
        """Dense rewards of ``rows`` in one SCAR call (runs in :attr:`executor`)."""
        dense = self.credit([r.prompt for r in rows], [r.response for r in rows], [r.completion_ids for r in rows])
        return [
            _Scored(
                [float(v) for v in dense.token_rewards[i].tolist()],
                float(dense.rewards[i]),
                float(dense.base_values[i]),
            )
            for i in range(len(rows))
        ]


class _Batcher:
    """Collects concurrent requests on one event loop into batches scored by one call in a worker thread.

    A batch starts when ``max_size`` requests are waiting or ``window_s`` after its first request; each
    request's future gets its own result, or the batch's exception.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        score: Callable[[list[Any]], list[Any]],
        executor: concurrent.futures.Executor,
        max_size: int,
        window_s: float,
    ) -> None:
        self.loop, self.score, self.executor = loop, score, executor
        self.max_size, self.window_s = max_size, window_s
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()
        self.calls = 0  # batches scored (one score call each)

    async def submit(self, item: Any) -> Any:
        future = self.loop.create_future()
        self._pending.append((item, future))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = self.loop.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        self.calls += 1
        try:
            results = await self.loop.run_in_executor(self.executor, self.score, [item for item, _ in batch])
        except BaseException as err:  # every caller of the batch sees the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)


class SCARRewardManager(RewardManagerBase):
    """verl reward manager ``"scar"``: dense SCAR credit per response token, assembled into ``rm_scores``.

    Built by verl in each reward-loop worker (``load_reward_manager``) as
    ``SCARRewardManager(config, tokenizer, compute_score, reward_router_address=..., reward_model_tokenizer=...)``:
    ``tokenizer`` is the policy's; ``compute_score``, the router address and verl's reward-model tokenizer are
    not used (the reward model and its tokenizer come from ``reward.scar``). The reward model is loaded once
    per process and settings (:meth:`init_class`).

    :meth:`run_single` returns ``{"reward_score": row, "reward_extra_info": {"scar_reward": r,
    "scar_base_value": v(∅)}}`` where ``row`` is the list of per-token rewards of the row's valid response
    tokens (the policy's tokens: SCAR maps the reward model's tokens onto them through the text, and the
    ``(1 - alpha) * r`` part lands on the last one, the EOS when the response ends in one);
    :meth:`assemble_rm_scores` writes the rows into ``[B, T_resp]``. A row without response tokens is not
    scored: its row is empty and its extra info NaN.

    Raises:
        ValueError: at construction, when the configuration does not route scoring through this manager
            (:func:`check_colocated_route`) or ``reward.scar`` is invalid.
    """

    _loaded_cache: ClassVar[dict[str, _Loaded]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        config: Any,
        tokenizer: Any,
        compute_score: Any = None,
        reward_router_address: str | None = None,
        reward_model_tokenizer: Any = None,
        **kwargs: Any,
    ) -> None:
        check_colocated_route(config)
        super().__init__(config, tokenizer, compute_score)  # runs init_class(config, tokenizer)
        self._loaded = self._cache_get(config, tokenizer)
        self._batchers: dict[asyncio.AbstractEventLoop, _Batcher] = {}
        self._calls_of_closed_loops = 0

    # ------------------------------------------------------------------ loading, once per process

    @classmethod
    def init_class(cls, config: Any, tokenizer: Any) -> None:
        """Load the reward model, its tokenizer and the SCAR settings of ``reward.scar``, once per process
        (and per settings and policy tokenizer)."""
        cls._cache_get(config, tokenizer)

    @classmethod
    def _settings(cls, config: Any) -> tuple[VerlCreditConfig, str]:
        settings = VerlCreditConfig.from_section(_get(config, f"reward.{CONFIG_SECTION}"))
        model_path = settings.model_path or _get(config, "reward.reward_model.model_path")
        if not model_path:
            raise ValueError(
                f"no reward model: set reward.{CONFIG_SECTION}.model_path (or reward.reward_model.model_path)"
            )
        return settings, str(model_path)

    @staticmethod
    def _cache_key(settings: VerlCreditConfig, model_path: str, policy_tokenizer: Any) -> str:
        return f"{model_path}|{settings.key()}|{id(policy_tokenizer)}"

    @classmethod
    def _cache_get(cls, config: Any, tokenizer: Any) -> _Loaded:
        settings, model_path = cls._settings(config)
        key = cls._cache_key(settings, model_path, tokenizer)
        with cls._cache_lock:
            if key not in cls._loaded_cache:
                cls._loaded_cache[key] = cls._load(settings, model_path, tokenizer)
            return cls._loaded_cache[key]

    @staticmethod
    def _load(settings: VerlCreditConfig, model_path: str, policy_tokenizer: Any) -> _Loaded:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from verl.utils.fs import copy_to_local

        local_model = copy_to_local(model_path)
        local_tokenizer = copy_to_local(settings.tokenizer_path) if settings.tokenizer_path else local_model
        model, info = AutoModelForSequenceClassification.from_pretrained(
            local_model,
            dtype=DTYPES[settings.dtype],
            trust_remote_code=settings.trust_remote_code,
            output_loading_info=True,
        )
        missing = [k for k in info.get("missing_keys", ()) if k.startswith(_HEAD_PREFIXES) or ".score." in k]
        if missing:
            raise ValueError(
                f"reward model {model_path}: the checkpoint has no trained sequence-classification head (missing "
                f"{missing[0]}); its scores would come from random weights"
            )
        model = model.to(settings.device).eval()
        rm_tokenizer = AutoTokenizer.from_pretrained(local_tokenizer, trust_remote_code=settings.trust_remote_code)
        if settings.suffix == "eos":
            if rm_tokenizer.eos_token_id is None:
                raise ValueError(
                    f"reward.{CONFIG_SECTION}.suffix='eos' but the reward model's tokenizer has no EOS token; "
                    "give suffix as 'none' or a list of token ids"
                )
            suffix_ids: list[int] | None = [int(rm_tokenizer.eos_token_id)]
        elif settings.suffix == "none":
            suffix_ids = None
        else:
            suffix_ids = as_token_ids(settings.suffix, "suffix")
        credit = SCAR(
            model, rm_tokenizer, policy_tokenizer=policy_tokenizer, suffix_ids=suffix_ids, **settings.settings
        )
        return _Loaded(credit, settings, policy_tokenizer)

    @property
    def credit(self) -> SCAR:
        """The :class:`~scar.credit.rewarder.SCAR` rewarder this process scores with."""
        return self._loaded.credit

    @property
    def settings(self) -> VerlCreditConfig:
        """The ``reward.scar`` settings."""
        return self._loaded.settings

    # ------------------------------------------------------------------ scoring

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            for old in [k for k in self._batchers if k.is_closed()]:
                self._calls_of_closed_loops += self._batchers.pop(old).calls
            batcher = _Batcher(
                loop,
                self._loaded.score,
                self._loaded.executor,
                self._loaded.credit.config.batch_size,
                self._loaded.settings.batch_window_s,
            )
            self._batchers[loop] = batcher
        return batcher

    @property
    def scar_calls(self) -> int:
        """How many SCAR calls this manager has made (each scores up to ``batch_size`` rows)."""
        return self._calls_of_closed_loops + sum(b.calls for b in self._batchers.values())

    async def run_single(self, data: DataProto) -> dict[str, Any]:
        """Dense rewards of the one row of ``data`` (verl passes ``data[i : i + 1]``).

        Concurrent calls are scored together (see the module docstring). Returns ``{"reward_score":
        list[float] (one per valid response token), "reward_extra_info": {"scar_reward", "scar_base_value"}}``.

        Raises:
            ValueError: ``data`` does not hold exactly one row, lacks a needed field, or SCAR refuses the
                row (the message says why).
        """
        if len(data) != 1:
            raise ValueError(
                f"the '{REWARD_MANAGER_NAME}' reward manager scores one row per run_single call, got {len(data)}"
            )
        row = _row(data, 0, self.tokenizer, self._loaded)
        if row is None:
            nan = float("nan")
            return {"reward_score": [], "reward_extra_info": {"scar_reward": nan, "scar_base_value": nan}}
        scored: _Scored = await self._batcher().submit(row)
        return {
            "reward_score": scored.token_rewards,
            "reward_extra_info": {"scar_reward": scored.reward, "scar_base_value": scored.base_value},
        }

    @classmethod
    def assemble_rm_scores(cls, data: DataProto, scores: list[Any]) -> torch.Tensor:
        """``rm_scores`` ``[B, T_resp]`` float32: row ``i`` of ``scores`` on the valid response tokens of row ``i``
        (the response part of ``attention_mask``), zeros elsewhere.

        Raises:
            TypeError: a score is a scalar (the row was scored elsewhere: see :func:`check_colocated_route`).
            ValueError: the number of rows or a row's length does not match ``data``.
        """
        _require(data, ("prompts", "responses", "attention_mask"))
        prompt_length = data.batch["prompts"].size(1)
        responses = data.batch["responses"]
        response_mask = data.batch["attention_mask"][:, prompt_length:].bool()
        if len(scores) != responses.size(0):
            raise ValueError(f"{len(scores)} scores for a batch of {responses.size(0)} rows")
        out = torch.zeros(responses.shape, dtype=torch.float32, device=responses.device)
        for i, row in enumerate(scores):
            if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray, torch.Tensor)):
                raise TypeError(
                    f"row {i}: got a scalar score {row!r}, not a row of per-token rewards: the batch was not "
                    f"scored by the '{REWARD_MANAGER_NAME}' reward manager's run_single (is "
                    "reward.custom_reward_function.path set?)"
                )
            columns = torch.nonzero(response_mask[i]).flatten()
            values = torch.as_tensor(np.asarray(row, dtype=np.float64), dtype=torch.float32)
            if values.numel() != columns.numel():
                raise ValueError(
                    f"row {i}: {values.numel()} per-token rewards for {columns.numel()} valid response tokens"
                )
            out[i, columns] = values.to(out.device)
        return out


def _require(data: DataProto, keys: Sequence[str]) -> None:
    present = set(data.batch.keys())
    missing = [k for k in keys if k not in present]
    if missing:
        raise ValueError(f"the batch lacks {missing}; a reward-loop batch holds prompts, responses, attention_mask")


def _row(data: DataProto, i: int, policy_tokenizer: Any, loaded: _Loaded) -> _Row | None:
    """Row ``i`` of a reward-loop batch as SCAR's inputs; None when it has no response tokens.

    Prompts may be left-padded (agent loop output) or right-padded (the v1 trainer's reward batch): the prompt
    tokens are those under the prompt part of ``attention_mask``, the response tokens those under its
    response part.
    """
    _require(data, ("prompts", "responses", "attention_mask"))
    prompts, responses = data.batch["prompts"][i], data.batch["responses"][i]
    mask = data.batch["attention_mask"][i].bool()
    prompt_ids = prompts[mask[: prompts.numel()]].tolist()
    completion_ids = responses[mask[prompts.numel() :]].tolist()
    if not completion_ids:
        return None
    response = policy_tokenizer.decode(completion_ids, skip_special_tokens=True)
    mode = loaded.settings.prompt
    prompt: str | list[int]
    if mode == "ids":
        prompt = prompt_ids
    elif mode == "text":
        prompt = policy_tokenizer.decode(prompt_ids, skip_special_tokens=True)
    else:
        raw = data.non_tensor_batch.get("raw_prompt")
        if raw is None:
            raise ValueError(
                f"reward.{CONFIG_SECTION}.prompt='chat' needs the batch's raw_prompt (the prompt's chat messages)"
            )
        messages = raw[i]
        messages = list(messages.tolist() if isinstance(messages, np.ndarray) else messages)
        text = loaded.credit.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if not isinstance(text, str):
            raise TypeError(f"the reward model's chat template gave {type(text).__name__}, expected text")
        if loaded.bos_text and text.startswith(loaded.bos_text):
            text = text[len(loaded.bos_text) :]  # the tokenizer adds its BOS when SCAR encodes the prompt
        prompt = text  # the tokenizer adds its BOS when SCAR encodes the prompt
    return _Row(prompt, response, completion_ids)


# ---------------------------------------------------------------------- advantage estimator


@dataclass
class ScarGRPOConfig:
    """Settings of the ``"scar_grpo"`` estimator, read from ``algorithm.scar_grpo``.

    Args:
        scale_rewards: ``"group"``, ``"batch"`` or ``"none"``; None (default): ``"group"`` when
            ``algorithm.norm_adv_by_std_in_grpo`` is true (verl's default), else ``"none"``.
        std_of: ``"token"`` (default) or ``"sequence"``.
        baseline: ``"position"`` (default) or ``"group"``.

    See :func:`scar.credit.advantages.dense_group_advantages` for their meaning.
    """

    scale_rewards: str | None = None
    std_of: str = "token"
    baseline: str = "position"

    def __post_init__(self) -> None:
        if self.scale_rewards is not None:
            check_choice(self.scale_rewards, "algorithm.scar_grpo.scale_rewards", SCALE_REWARDS)
        check_choice(self.std_of, "algorithm.scar_grpo.std_of", STD_OF)
        check_choice(self.baseline, "algorithm.scar_grpo.baseline", BASELINES)

    @classmethod
    def from_algorithm(cls, config: Any) -> ScarGRPOConfig:
        """The settings in ``algorithm.scar_grpo``, with ``scale_rewards`` resolved from
        ``algorithm.norm_adv_by_std_in_grpo`` when not given."""
        section = _plain(_get(config, ADV_ESTIMATOR_NAME, {})) if config is not None else {}
        if not isinstance(section, Mapping):
            raise TypeError(f"algorithm.{ADV_ESTIMATOR_NAME} must be a mapping, got {type(section).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - names)
        if unknown:
            raise TypeError(f"algorithm.{ADV_ESTIMATOR_NAME} has unknown keys {unknown}; it takes {sorted(names)}")
        out = cls(**section)
        if out.scale_rewards is None:
            norm = _get(config, "norm_adv_by_std_in_grpo", True) if config is not None else True
            out.scale_rewards = "group" if bool(norm) else "none"
        return out


@register_adv_est(ADV_ESTIMATOR_NAME)
def compute_scar_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: Any = None,
    config: Any = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token group advantages of dense rewards, as verl's advantage estimator ``"scar_grpo"``.

    The rows of one group are those with equal ``index`` values (verl passes the ``uid`` of each row; verl
    reorders rows, so groups are found by value, never by position). Within each group the advantages are
    :func:`~scar.credit.advantages.dense_group_advantages` of the rows' rewards with that group's size as
    ``num_generations``, so groups of different sizes are handled (verl's padding rows form a group of
    their own); with ``scale_rewards="batch"`` the std pools the whole batch, which needs groups of equal
    size. Rewards at positions outside ``response_mask`` are dropped (verl's GAE skips them too); a row's
    length is up to its last response token. A group of one row has advantages 0 (nothing to compare it
    with). Every row is a member of its group: in a multi-turn run each output of a session is one (verl's
    own ``grpo`` keeps only each session's last output in the v1 trainer). Settings: :class:`ScarGRPOConfig`
    (``algorithm.scar_grpo``).

    Args:
        token_level_rewards: ``[B, T]`` per-token rewards (``token_level_scores``, less the KL penalty when
            ``algorithm.use_kl_in_reward``).
        response_mask: ``[B, T]`` 1 on the policy's response tokens.
        index: ``[B]`` group ids (``data.non_tensor_batch["uid"]``).
        config: verl's ``algorithm`` config (``scar_grpo`` section, ``norm_adv_by_std_in_grpo``).
        **kwargs: other arguments verl passes (unused).

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` in the rewards' dtype and zero outside ``response_mask``:
        the advantages above and the undiscounted returns-to-go of the rewards.

    Raises:
        ValueError: no ``index``, shapes that disagree, ``scale_rewards="batch"`` with groups of different
            sizes, or what :func:`dense_group_advantages` refuses.
    """
    settings = ScarGRPOConfig.from_algorithm(config)
    if index is None:
        raise ValueError(
            f"the '{ADV_ESTIMATOR_NAME}' advantage estimator groups rows by uid: it needs index (verl passes "
            "data.non_tensor_batch['uid'])"
        )
    if token_level_rewards.dim() != 2 or response_mask.shape != token_level_rewards.shape:
        raise ValueError(
            f"token_level_rewards {tuple(token_level_rewards.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must be the same [B, T]"
        )
    n, length = token_level_rewards.shape
    uids = list(index.tolist() if isinstance(index, np.ndarray) else index)
    if len(uids) != n:
        raise ValueError(f"index has {len(uids)} entries for {n} rows")
    mask = response_mask.bool()
    rewards = token_level_rewards.to(torch.float64).masked_fill(~mask, 0.0)
    positions = torch.arange(1, length + 1, device=mask.device)
    lengths = torch.where(mask, positions, 0).amax(dim=1) if length else torch.zeros(n, dtype=torch.long)

    groups: dict[Any, list[int]] = {}
    for row, uid in enumerate(uids):
        groups.setdefault(uid, []).append(row)
    by_size: dict[int, list[int]] = {}
    for rows in groups.values():
        by_size.setdefault(len(rows), []).extend(rows)
    if settings.scale_rewards == "batch" and len(by_size) > 1:
        raise ValueError(
            f"algorithm.{ADV_ESTIMATOR_NAME}.scale_rewards='batch' pools the whole batch and needs groups of equal "
            f"size; got sizes {sorted(by_size)}. Use 'group' or 'none'"
        )
    advantages = torch.zeros(n, length, dtype=torch.float64, device=rewards.device)
    for size, rows in by_size.items():
        order = torch.tensor(rows, dtype=torch.long, device=rewards.device)
        advantages[order] = dense_group_advantages(
            rewards[order],
            lengths[order],
            size,
            scale_rewards=settings.scale_rewards or "group",
            std_of=settings.std_of,
            baseline=settings.baseline,
        ).to(torch.float64)
    returns = rewards.flip(1).cumsum(1).flip(1).masked_fill(~mask, 0.0)
    dtype = token_level_rewards.dtype if token_level_rewards.is_floating_point() else torch.float32
    return advantages.masked_fill(~mask, 0.0).to(dtype), returns.to(dtype)


register(REWARD_MANAGER_NAME)(SCARRewardManager)
