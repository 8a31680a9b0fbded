"""Checks before Ray starts: everything the driver can verify from the config, the model's ``config.json``,
its tokenizer and the file system.

Without these a wrong path or a bad data row costs 40-100 s of cluster start-up and ends in a message from
deep inside a worker (a ``KeyError: 'ground_truth'`` among thousands of log lines, or verl's "no
materializable trajectories"). Here every problem found is listed at once, each naming the key, the file,
the first bad row and what to change, and the launch stops before any worker exists.

Reading data stays cheap: parquet files are read column by column (only the columns verl and POISE read),
in record batches, never into pandas.
"""

from __future__ import annotations

import ast
import functools
import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from poise_verl.config import probe_layer_problem
from poise_verl.verl_ext.checkpoint_guard import TRACKER_FILE, step_folders  # verl's tracker, written last

# Columns verl's RLHFDataset and reward managers read from every row (besides the prompt column).
DATA_SOURCE = "data_source"
REWARD_MODEL = "reward_model"
GROUND_TRUTH = "ground_truth"
DATA_SUFFIXES = (".parquet", ".json", ".jsonl")
RESUME_MODES = ("auto", "disable", "resume_path")
SCAN_BATCH_ROWS = 65536


class PreflightError(SystemExit):
    """The launch stops before Ray starts; ``str(error)`` is the whole message (one problem per line)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        lines = [f"poise-verl: stopped before starting Ray, {len(problems)} problem(s) to fix:"]
        lines += [f"  {i}. {problem}" for i, problem in enumerate(problems, 1)]
        super().__init__("\n".join(lines))

    def __str__(self) -> str:
        return str(self.code)


def preflight(config: DictConfig) -> None:
    """Raise :class:`PreflightError` listing every problem found; return quietly when there is none."""
    is_poise = _is_poise(config)
    problems: list[str] = []
    problems += check_data(config, is_poise)
    problems += check_model(config, is_poise)
    problems += check_resume(config, is_poise)
    problems += check_reward_function(config)
    if not problems:  # the files and the tokenizer load: now the prompts' lengths
        problems += check_prompt_lengths(config)
    if problems:
        raise PreflightError(problems)


def _is_poise(config: DictConfig) -> bool:
    from poise_verl.config import TrainerMode

    return config.trainer.v1.trainer_mode in TrainerMode.POISE_MODES


def _paths(value) -> list[str]:
    if value is None:
        return []
    return (
        [str(v) for v in value]
        if OmegaConf.is_list(value) or isinstance(value, list | tuple)
        else [str(value)]
    )


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


# ---------------------------------------------------------------------------------------------------- data
def check_data(config: DictConfig, is_poise: bool) -> list[str]:
    """Training and validation files: they exist, verl can read them, every row has what verl reads."""
    data = config.data
    prompt_key = str(data.get("prompt_key", "prompt"))
    domain_key = str(config.poise.buffer.domain_key) if is_poise else None
    problems: list[str] = []
    train_rows = 0
    for key in ("train_files", "val_files"):
        paths = _paths(data.get(key))
        if not paths:
            problems.append(f"data.{key} is empty: point it at one or more .parquet files")
        for path in paths:
            found, rows = check_data_file(
                path,
                f"data.{key}",
                prompt_key=prompt_key,
                domain_key=domain_key if key == "train_files" else None,
            )
            problems += found
            if key == "train_files":
                train_rows += rows
    batch = int(data.train_batch_size)
    max_samples = int(data.get("train_max_samples", -1) or -1)
    usable = min(train_rows, max_samples) if max_samples > 0 else train_rows
    if not problems and 0 < usable < batch:
        problems.append(
            f"data.train_files hold {usable} usable row(s), fewer than one step's data.train_batch_size={batch} "
            "prompts: add rows, or lower budget.rollouts_per_step"
        )
    return problems


def check_data_file(path: str, key: str, *, prompt_key: str, domain_key: str | None) -> tuple[list[str], int]:
    """Problems of one data file (empty when fine) and its row count. Remote paths are left to verl."""
    if _is_remote(path):
        return [], 0
    local = os.path.expanduser(path.removeprefix("file://"))
    if not os.path.isfile(local):
        hint = " (a folder: name the .parquet file itself)" if os.path.isdir(local) else ""
        return [
            (
                f"{key}: {path} does not exist{hint}. Set {key} to an existing file (python -m "
                "poise_verl.data.prepare writes the recipes' datasets, see recipes/README.md)"
            )
        ], 0
    if not local.endswith(DATA_SUFFIXES):
        return [f"{key}: {path} is not a .parquet, .json or .jsonl file (verl reads only these)"], 0
    try:
        schema, batches = _open_table(local, [prompt_key, DATA_SOURCE, REWARD_MODEL, domain_key])
    except Exception as error:  # noqa: BLE001 - any reader error is the user's file, reported as such
        return [f"{key}: {path} cannot be read ({type(error).__name__}: {error})"], 0

    names = set(schema.names)
    wanted = [prompt_key, DATA_SOURCE, REWARD_MODEL] + ([domain_key] if domain_key else [])
    missing = [c for c in wanted if c not in names]
    if missing:
        why = {
            prompt_key: f"the chat messages (data.prompt_key={prompt_key})",
            DATA_SOURCE: "names the dataset, passed to the reward function",
            REWARD_MODEL: f"a struct with {GROUND_TRUTH}, the answer the reward function compares against",
        }
        if domain_key:
            why[domain_key] = (
                f"the row's domain for POISE's replay buffer (poise.buffer.domain_key={domain_key})"
            )
        listed = "; ".join(f"{c}: {why[c]}" for c in missing)
        return [f"{key}: {path} has no column(s) {missing} ({listed}). Its columns are {sorted(names)}"], 0

    problems = _check_types(schema, path, key, prompt_key)
    if problems:
        return problems, 0
    import pyarrow.compute as pc

    rows = 0
    first_bad: dict[str, int] = {}
    bad_counts: dict[str, int] = {}
    for batch in batches:
        for what, mask in _bad_rows(batch, prompt_key).items():
            count = int(pc.sum(mask).as_py() or 0)
            if count:
                bad_counts[what] = bad_counts.get(what, 0) + count
                if what not in first_bad:
                    first_bad[what] = rows + int(pc.index(mask, True).as_py())
        rows += batch.num_rows
    if rows == 0:
        return [f"{key}: {path} has no rows"], 0
    fixes = {
        "prompt": f"a non-empty list of {{role, content}} messages in column {prompt_key}",
        "ground_truth": f"{REWARD_MODEL}.{GROUND_TRUTH} (the answer the reward function compares against)",
        "data_source": f"a {DATA_SOURCE}",
    }
    for what, index in first_bad.items():
        problems.append(
            f"{key}: {path} row {index} (0-based; {bad_counts[what]} of {rows} rows) has no {fixes[what]}: "
            "every row needs one. Fix or drop those rows"
        )
    return problems, rows


def _open_table(path: str, columns: list[str | None]):
    """(arrow schema, iterator of record batches with the wanted columns that exist)."""
    import pyarrow as pa

    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        present = [c for c in dict.fromkeys(columns) if c and c in schema.names]
        return schema, parquet.iter_batches(batch_size=SCAN_BATCH_ROWS, columns=present)
    import pandas as pd

    frame = pd.read_json(path, lines=path.endswith(".jsonl"))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    present = [c for c in dict.fromkeys(columns) if c and c in table.schema.names]
    return table.schema, iter(table.select(present).to_batches(SCAN_BATCH_ROWS))


def _check_types(schema, path: str, key: str, prompt_key: str) -> list[str]:
    import pyarrow as pa

    problems = []
    prompt = schema.field(prompt_key).type
    if not (pa.types.is_list(prompt) or pa.types.is_large_list(prompt)) or not (
        pa.types.is_struct(prompt.value_type)
        and {"role", "content"}
        <= {prompt.value_type.field(i).name for i in range(prompt.value_type.num_fields)}
    ):
        problems.append(
            f"{key}: {path} column {prompt_key} is {prompt}, but verl reads chat messages: a list of "
            "{role, content} structs, e.g. [{'role': 'user', 'content': '...'}]"
        )
    reward = schema.field(REWARD_MODEL).type
    if not pa.types.is_struct(reward) or reward.get_field_index(GROUND_TRUTH) < 0:
        problems.append(
            f"{key}: {path} column {REWARD_MODEL} is {reward}, but verl reads {REWARD_MODEL}['{GROUND_TRUTH}']: "
            f"make it a struct with a {GROUND_TRUTH} field, e.g. {{'style': 'rule', '{GROUND_TRUTH}': '42'}}"
        )
    return problems


def _bad_rows(batch, prompt_key: str) -> dict:
    """{what: boolean mask of the rows lacking it} for one record batch."""
    import pyarrow.compute as pc

    prompt = batch.column(prompt_key)
    ground_truth = pc.struct_field(batch.column(REWARD_MODEL), GROUND_TRUTH)
    return {
        "prompt": pc.fill_null(pc.equal(pc.list_value_length(prompt), 0), True),
        "ground_truth": pc.is_null(ground_truth),
        "data_source": pc.is_null(batch.column(DATA_SOURCE)),
    }


# --------------------------------------------------------------------------------------------------- model
def check_model(config: DictConfig, is_poise: bool) -> list[str]:
    """The policy's config.json (decoder depth against poise.probe_layer) and its tokenizer."""
    model = config.actor_rollout_ref.model
    path = str(model.path)
    local, problem = _local_dir(path, "actor_rollout_ref.model.path")
    if problem:
        return [problem]
    problems = []
    if local is not None and is_poise:
        layers = _decoder_layers(Path(local))
        where = f"the model at {path} (num_hidden_layers in its config.json)"
        problem = probe_layer_problem(int(config.poise.probe_layer), layers, where)
        if problem:
            problems.append(problem)
    tokenizer_path = str(model.get("tokenizer_path") or path)
    tokenizer_dir, problem = _local_dir(tokenizer_path, "actor_rollout_ref.model.tokenizer_path")
    if problem:
        return problems + [problem]
    if tokenizer_dir is not None:
        problems += _check_tokenizer(config, tokenizer_dir, tokenizer_path, is_poise)
    return problems


def _local_dir(path: str, key: str) -> tuple[str | None, str | None]:
    """(local folder of a model path or None for a hub id / remote path that verl resolves, problem or None)."""
    if _is_remote(path):
        return None, None
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        return local, None
    if os.path.exists(local):
        return None, f"{key}={path} is a file: point it at the model's folder (the one holding config.json)"
    if os.path.isabs(local) or path.startswith((".", "~")):
        return None, f"{key}={path} does not exist: point it at a model folder or a Hugging Face model id"
    return None, None  # "org/name": a hub id, downloaded by the workers


def _decoder_layers(folder: Path) -> int | None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    raw = json.loads(config_file.read_text())
    for section in (raw, raw.get("text_config") or {}, raw.get("llm_config") or {}):
        if isinstance(section.get("num_hidden_layers"), int):
            return section["num_hidden_layers"]
    return None


@functools.lru_cache(maxsize=4)
def _load_tokenizer(folder: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)


def _check_tokenizer(config: DictConfig, folder: str, shown: str, is_poise: bool) -> list[str]:
    trust = bool(config.actor_rollout_ref.model.get("trust_remote_code", False))
    try:
        tokenizer = _load_tokenizer(folder, trust)
    except Exception as error:  # noqa: BLE001 - reported with the path
        return [f"the tokenizer at {shown} cannot be loaded ({type(error).__name__}: {error})"]
    problems = []
    if not getattr(tokenizer, "chat_template", None):
        problems.append(
            f"the tokenizer at {shown} has no chat template, and verl formats every prompt with it: use a "
            "chat/instruct model or add a chat_template to its tokenizer_config.json"
        )
    if is_poise:
        from poise_verl.reasoning_split import end_of_thinking_ids

        try:  # what the trainer reads: the marker may be several tokens, but never none or unknown ones
            end_of_thinking_ids(tokenizer, config.poise.get("end_of_thinking_token"))
        except ValueError as error:
            problems.append(f"{error} (the tokenizer at {shown})")
    return problems


# ------------------------------------------------------------------------------------------- prompt lengths
# verl 0.9.1's agent loop cuts a prompt longer than rollout.prompt_length (data.max_prompt_length) to its last
# tokens with one warning in a worker's log, whatever data.truncation says (its RLHFDataset no longer applies it).
TRUNCATIONS = ("error", "left", "right", "middle")


def check_prompt_lengths(config: DictConfig) -> list[str]:
    """Prompts longer than ``data.max_prompt_length`` once verl's chat template is applied, per data file.

    Every row is measured, with the tokenizer and chat template the rollout uses. Under ``data.truncation=error``
    (verl's default) an over-long prompt is a problem naming the file, the first such row and its length, unless
    ``data.filter_overlong_prompts`` drops those rows (verl's dataset does); ``truncation=left`` is what verl's
    agent loop does anyway (the count is printed); ``right`` and ``middle`` are refused, since verl would still
    cut on the left. Hub model ids and remote files are left to verl.
    """
    data = config.data
    model = config.actor_rollout_ref.model
    tokenizer_path = str(model.get("tokenizer_path") or model.path)
    folder, _ = _local_dir(tokenizer_path, "actor_rollout_ref.model.tokenizer_path")
    if folder is None:
        return []
    tokenizer = _load_tokenizer(folder, bool(model.get("trust_remote_code", False)))
    limit = int(data.max_prompt_length)
    truncation = str(data.get("truncation", "error"))
    dropping = bool(data.get("filter_overlong_prompts", False))
    prompt_key = str(data.get("prompt_key", "prompt"))
    template_kwargs = data.get("apply_chat_template_kwargs") or {}
    if OmegaConf.is_config(template_kwargs):
        template_kwargs = OmegaConf.to_container(template_kwargs, resolve=True)
    if truncation not in TRUNCATIONS:
        return [f"data.truncation={truncation}: choose one of {list(TRUNCATIONS)}"]
    problems: list[str] = []
    kept_train_rows = 0
    for key in ("train_files", "val_files"):
        for path in _paths(data.get(key)):
            if _is_remote(path):
                continue
            local = os.path.expanduser(path.removeprefix("file://"))
            lengths = _prompt_lengths(local, prompt_key, tokenizer, template_kwargs)
            over = [row for row, length in enumerate(lengths) if length > limit]
            if key == "train_files":
                kept_train_rows += len(lengths) - (len(over) if dropping else 0)
            if not over:
                continue
            first = over[0]
            where = (
                f"data.{key}: {path} row {first} (0-based; {len(over)} of {len(lengths)} rows over the limit) is a "
                f"prompt of {lengths[first]} tokens with the chat template, longer than data.max_prompt_length={limit}"
            )
            if dropping:
                print(f"poise-verl: {where}; data.filter_overlong_prompts=true drops those rows", flush=True)
            elif truncation == "left":
                print(f"poise-verl: {where}; data.truncation=left keeps the last {limit} tokens of each", flush=True)
            elif truncation == "error":
                problems.append(
                    f"{where}, and data.truncation=error. Raise data.max_prompt_length (to {max(lengths)} for "
                    "every row), set data.filter_overlong_prompts=true to drop such rows, or data.truncation=left to "
                    "keep the end of each"
                )
            else:
                problems.append(
                    f"{where}, and data.truncation={truncation}: verl 0.9.1's rollout cuts over-long prompts on the "
                    "left whatever this says. Set data.truncation=left (or error), data.filter_overlong_prompts=true, "
                    "or raise data.max_prompt_length"
                )
    batch = int(data.train_batch_size)
    if dropping and not problems and kept_train_rows < batch:
        problems.append(
            f"data.train_files: {kept_train_rows} row(s) are within data.max_prompt_length={limit} tokens, fewer than "
            f"one step's data.train_batch_size={batch}: raise data.max_prompt_length"
        )
    return problems


def _prompt_lengths(path: str, prompt_key: str, tokenizer, template_kwargs: dict) -> list[int]:
    """Token count of every row's prompt as verl's rollout builds it (chat template, generation prompt)."""
    _, batches = _open_table(path, [prompt_key])
    lengths: list[int] = []
    for batch in batches:
        conversations = batch.column(prompt_key).to_pylist()
        texts = tokenizer.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=False, **template_kwargs
        )
        backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: one batched Rust call
        if backend is not None:
            lengths += [len(encoding.ids) for encoding in backend.encode_batch(texts, add_special_tokens=False)]
        else:
            lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return lengths


# -------------------------------------------------------------------------------------------------- resume
def check_resume(config: DictConfig, is_poise: bool) -> list[str]:
    """The checkpoint a launch would resume from exists and is whole (verl writes its tracker file last)."""
    trainer = config.trainer
    mode = str(trainer.resume_mode)
    if mode not in RESUME_MODES:
        return [f"trainer.resume_mode={mode!r}: choose one of {list(RESUME_MODES)}"]
    if mode == "disable":
        return []
    if mode == "resume_path":
        path = trainer.get("resume_from_path")
        if not path:
            return [
                "trainer.resume_mode=resume_path needs trainer.resume_from_path=<run folder>/global_step_N"
            ]
        folder = Path(os.path.expanduser(str(path)))
        return _check_step_folder(folder, "trainer.resume_from_path", is_poise) or _check_same_run(
            folder, config, is_poise
        )
    root = Path(str(trainer.default_local_dir))
    tracker = root / TRACKER_FILE
    if not tracker.is_file():
        return []  # nothing saved yet: a fresh start
    text = tracker.read_text().strip()
    if not text.isdigit():
        return [
            (
                f"{tracker} reads {text!r}, not a step number: trainer.resume_mode=auto cannot tell which checkpoint to "
                "resume. Write the step of the last complete global_step_N folder into it, or delete it to start fresh"
            )
        ]
    folder = root / f"global_step_{text}"
    return _check_step_folder(folder, f"{tracker} (trainer.resume_mode=auto)", is_poise) or _check_same_run(
        folder, config, is_poise
    )


_START_FRESH = "or start fresh: a new trainer.default_local_dir (or trainer.resume_mode=disable)"


def _check_same_run(folder: Path, config: DictConfig, is_poise: bool) -> list[str]:
    """The checkpoint a launch resumes was written by the same algorithm, and under POISE with the same
    ``poise.*`` settings: a resume continues a run, it never silently trains another one from its state."""
    from poise_verl.config import POISE_STATE_FILE, RUN_IDENTITY_FILE, algorithm_identity

    algorithm = algorithm_identity(config)
    identity_file = folder / RUN_IDENTITY_FILE
    if identity_file.is_file():
        saved = json.loads(identity_file.read_text())
    else:  # written before run_identity.json existed: only POISE's own file tells the algorithms apart
        saved = {"algorithm": "poise" if (folder / POISE_STATE_FILE).is_file() else None, "algo_name": None}
    if saved["algorithm"] is not None and saved["algorithm"] != algorithm:
        shown = f"algo={saved['algo_name']}" if saved.get("algo_name") else f"the {saved['algorithm']} algorithm"
        return [
            (
                f"{folder} was written by {shown} ({saved['algorithm']}); this launch trains {algorithm} "
                f"(algo={config.get('algo_name')}). Resuming would train {algorithm} on from another algorithm's "
                f"weights, optimizer state and data position: resume it with {shown}, {_START_FRESH}"
            )
        ]
    if not (is_poise and (folder / POISE_STATE_FILE).is_file()):
        return []
    return _check_same_poise_settings(folder, config)


def _check_same_poise_settings(folder: Path, config: DictConfig) -> list[str]:
    from dataclasses import asdict

    import torch

    from poise_verl.config import POISE_STATE_FILE, PoiseSettings, changed_poise_settings

    # mmap: the probes' and the replay buffer's tensors stay on disk; only the settings are read.
    saved = torch.load(folder / POISE_STATE_FILE, weights_only=False, mmap=True, map_location="cpu").get("settings")
    if saved is None:  # a checkpoint from before the settings were saved with it
        return []
    changed = changed_poise_settings(saved, asdict(PoiseSettings.from_config(config.poise)))
    if not changed:
        return []

    def shown(value) -> str:
        return "(not set)" if not isinstance(value, str | int | float | bool | list | dict | None) else repr(value)

    lines = "\n".join(f"    {key}: saved {shown(old)}, this launch {shown(new)}" for key, old, new in changed)
    return [
        (
            f"{folder} was trained with other poise settings than this launch sets; a resumed run keeps the probes, "
            f"replay buffer and settings it saved, so the new values would not apply:\n{lines}\n  Resume with the "
            f"saved values, {_START_FRESH}"
        )
    ]


def _check_step_folder(folder: Path, key: str, is_poise: bool) -> list[str]:
    if "global_step_" not in folder.name:
        return [f"{key}={folder} must name a checkpoint folder global_step_N{_available(folder.parent)}"]
    if not folder.is_dir():
        return [f"{key}: checkpoint folder {folder} does not exist{_available(folder.parent)}"]
    if not (folder / "actor").is_dir():
        return [
            f"{key}: {folder} holds no actor checkpoint (no actor/ folder): it is not a complete checkpoint"
        ]
    if is_poise:
        from poise_verl.config import POISE_STATE_FILE

        if not (folder / POISE_STATE_FILE).is_file():
            return [
                (
                    f"{key}: {folder} has no {POISE_STATE_FILE} (probe and replay buffer): it was not written by the "
                    "POISE trainer. Resume it with the algorithm that wrote it, or set trainer.default_local_dir to a "
                    "new folder"
                )
            ]
    broken = _unreadable_archives(folder)
    if broken:
        return [_unreadable_checkpoint(folder, broken, key, is_poise)]
    return []


def _unreadable_archives(folder: Path) -> list[Path]:
    """The ``.pt`` files of a checkpoint folder that are not whole torch archives (a write cut short).

    ``torch.save`` writes a zip archive whose directory sits at its end, so a file cut short has none; reading the
    directory costs a few bytes, whatever the checkpoint's size (a flipped bit inside is not detected).
    """
    import zipfile

    return [path for path in sorted(folder.rglob("*.pt")) if path.is_file() and not zipfile.is_zipfile(path)]


def _unreadable_checkpoint(folder: Path, broken: list[Path], key: str, is_poise: bool) -> str:
    step = int(folder.name.rsplit("_", 1)[-1])
    earlier = [path for number, path in reversed(step_folders(folder.parent)) if number < step]
    whole = next((p for p in earlier if not _check_step_folder(p, key, is_poise)), None)
    names = ", ".join(str(path.relative_to(folder)) for path in broken)
    message = (
        f"{key}: the checkpoint {folder} is unreadable: {names} is not a whole torch archive (its write was cut "
        "short). "
    )
    if whole is not None:
        message += (
            f"Resume from the previous checkpoint with the same command plus trainer.resume_mode=resume_path "
            f"trainer.resume_from_path={whole}, or start fresh with trainer.resume_mode=disable"
        )
    else:
        message += "No earlier checkpoint is whole: start fresh with trainer.resume_mode=disable"
    return message + " (or a new trainer.default_local_dir)"


def _available(parent: Path) -> str:
    steps = step_folders(parent)
    if not steps:
        return f" (no global_step_N folders in {parent})"
    return f"; {parent} holds {', '.join(path.name for _, path in steps[-5:])}"


# -------------------------------------------------------------------------------------------------- reward
def check_reward_function(config: DictConfig) -> list[str]:
    """``reward.custom_reward_function``: the file exists and defines the named function (read, not run)."""
    function = config.reward.get("custom_reward_function") or {}
    path, name = function.get("path"), function.get("name")
    if not path or str(path).startswith("pkg://"):
        return []
    path = os.path.expanduser(str(path).removeprefix("file://"))
    if not os.path.isfile(path):
        return [
            f"reward.custom_reward_function.path={path} does not exist: point it at the .py file of your reward"
        ]
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except SyntaxError as error:
        return [f"reward.custom_reward_function.path={path} does not parse: line {error.lineno}: {error.msg}"]
    defined = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(t.id for t in targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any(alias.name == "*" for alias in node.names):
                return []  # a star import may define it: left to verl
            defined.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    if name not in defined:
        functions = sorted(n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
        return [
            (
                f"reward.custom_reward_function.name={name!r} is not defined in {path} (its functions: {functions}): "
                "set reward.custom_reward_function.name to the function verl should call"
            )
        ]
    return []
