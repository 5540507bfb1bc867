"""Settings: one YAML file, validated at start with messages that name the offending key.

The node reads nothing else: the environment may only say *which* file (``DICOM_NODE_CONFIG``).
Relative paths in the file are resolved against the file's own folder.

Imports point one way: this module composes the settings of `dicom_node.security` (its
dataclasses, `validate_security`), `dicom_node.dicomweb` (a destination's `dicomweb:`,
`check_settings`) and `dicom_node.routing` (`parse_rules`); none imports it.
ConfigError lives in `dicom_node.config_error`, below all three, and is re-exported here.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dicom_node.config_error import ConfigError as ConfigError
from dicom_node.dicomweb import DicomwebSettings, check_settings
from dicom_node.security import DestinationTlsSettings, DiskThreshold, SecuritySettings, validate_security
from dicom_node.security import ListenerTlsSettings as ListenerTlsSettings
from dicom_node.security import PeerSettings as PeerSettings
from inference.api import (
    DEFAULT_MIN_LESION_VOLUME_MM3,
    NNUNET_OPTIONS,
    SCT_MODEL_NAMES,
    SCT_PREFIX,
    AnalysisRequest,
    AnalysisSettings,
    LesionModelSpec,
    ModelSpec,
    SettingError,
    check_min_volume,
    check_nnunet_settings,
)

if TYPE_CHECKING:
    from dicom_node.routing import Rule

CONFIG_ENV = "DICOM_NODE_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "default.yaml"


@dataclass
class NodeSettings:
    ae_title: str = "SPINE_NODE"
    host: str = "127.0.0.1"
    port: int = 11112
    max_pdu: int = 262144
    max_associations: int = 16
    network_timeout_s: float = 60.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0


@dataclass
class StorageSettings:
    # instances/, results/, catalog.sqlite live below it. Relative to the config file's folder:
    # for the shipped config/default.yaml that is the checkout's var/ (git-ignored, `make clean`)
    data_dir: str = "../var"
    fsync: bool = True


@dataclass
class CompletionSettings:
    idle_seconds: float = 30.0
    poll_interval_s: float = 1.0


@dataclass
class RaySettings:
    address: str = ""  # Ray cluster (host:port of `ray start --head`); "" = a private local Ray instance
    actors: int = 1  # model-holding actors = jobs run at once (one per GPU)
    actor_cpus: float = 1.0  # CPUs reserved per actor
    actor_gpus: float = 0.0  # GPUs per actor (1 on GPU workers)
    task_timeout_s: float = 3600.0  # one inference longer than this fails the attempt


@dataclass
class WorkerSettings:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    torch_threads: int = 0  # 0: torch's default
    poll_interval_s: float = 1.0
    max_attempts: int = 2  # a job that fails this often on its own (not dispatch) is failed
    executor: str = "local"  # local (in the node's process) | ray (actors on a Ray cluster)
    ray: RaySettings = field(default_factory=RaySettings)


@dataclass
class ModelSettings:
    path: str = "builtin:spinecord-t2"  # builtin:NAME, a model.json folder, or an nnU-Net v2 folder
    # the rest only for nnU-Net v2 folders (a trainer folder, or a dataset folder holding them);
    # empty values mean: what nnU-Net's own predictor would run
    configuration: str = ""  # "" = the trainer folder's own; 3d_fullres in a dataset folder
    folds: list[int | str] = field(default_factory=list)  # [] = fold_0..N (fold_all when it is the only one)
    checkpoint: str = "checkpoint_final.pth"  # file name inside each fold_X/
    use_mirroring: bool = True  # test-time mirroring on the axes the checkpoint allows
    cord_labels: list[int | str] = field(default_factory=list)  # labels (numbers or names) that are cord
    lesion_labels: list[int | str] = field(default_factory=list)  # labels that are lesion (also cord)
    fast_cpu: bool = False  # CPU: faster kernels, same labels, probabilities not bit-identical to nnU-Net
    # only for sct:NAME models (Spinal Cord Toolbox's lesion models, a site's own SCT copy): the
    # folder(s) holding their .h5 files; "" = $SCT_DIR/data, and the pipelines using it are off when
    # the files are not there
    sct_data_dir: str | list[str] = ""


@dataclass
class PipelineSettings:
    model: str = "default"  # key in `models`
    min_lesion_volume_mm3: float = DEFAULT_MIN_LESION_VOLUME_MM3  # smaller lesion components are dropped (0 = keep all)
    lesion_model: str = ""  # key in `models` of an sct:NAME model that draws the lesions ("" = `model`'s own)


# The viewer a destination's users read our SEG with; it picks the SEG encoding (results/build.py,
# seg_variant). generic: BINARY (bit-packed), what PACS, highdicom, dcmqi/3D Slicer and dcmtk read
# right. ohif: OHIF 3.x misreads bit-packed frames whose Rows x Columns is not a multiple of 8 (and
# refuses odd-length pixel data: not a multiple of 16 with an odd frame count), so it gets byte
# frames (8-bit FRACTIONAL OCCUPANCY, 0/255, RLE Lossless), read right at any size.
VIEWERS = ("generic", "ohif")


@dataclass
class DestinationSettings:
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    send_seg: bool = True
    send_sr: bool = True
    viewer: str = "generic"  # one of VIEWERS
    seg_omit_empty_frames: bool = False
    seg_fractional: bool = False
    secondary_capture: bool = False
    tls: DestinationTlsSettings = field(default_factory=DestinationTlsSettings)
    # url set: STOW-RS to that DICOMweb root instead of C-STORE (ae_title, host, port unused)
    dicomweb: DicomwebSettings = field(default_factory=DicomwebSettings)


@dataclass
class DispatchSettings:
    # 2, 4, ... 512 s, then every 900 s: 105 attempts span about 24 h, so a PACS down for a
    # maintenance night gets its results without anyone running `dicom-node retry`
    max_attempts: int = 105
    backoff_initial_s: float = 2.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 900.0
    timeout_s: float = 30.0


@dataclass
class LoggingSettings:
    level: str = "INFO"
    format: str = "text"  # text | json (one JSON object per line, with job/series correlation ids)
    allow_phi: bool = False  # false: patient names/ids/birth dates are redacted from every log record


@dataclass
class WebSettings:
    enabled: bool = False  # HTTP server for /metrics, /health and the status page
    host: str = "127.0.0.1"  # loopback by default; another address needs a token
    port: int = 8080  # 0 = any free port
    token: str = ""  # if set, required (Bearer header or ?token=) for everything but /health
    status_limit: int = 50  # series listed on the status page


@dataclass
class RetentionSettings:
    finished_days: float = 7.0  # a finished series' instances and results go this long after it finished; 0 = kept
    failed_days: float = 0.0  # the same for a series whose job failed (kept for `dicom-node retry`); 0 = kept
    max_stored: int | str = 0  # instance bytes kept at most: over it, the oldest finished series go early; 0 = no cap
    interval_s: float = 600.0  # how often the node looks


def default_models() -> dict[str, ModelSettings]:
    """Our model, and Spinal Cord Toolbox's two MS lesion models (found only where a site has SCT)."""
    return {"default": ModelSettings(),
            "sct_t2_ax_lesion": ModelSettings(path=f"{SCT_PREFIX}t2_ax_lesion"),
            "sct_t2s_lesion": ModelSettings(path=f"{SCT_PREFIX}t2s_lesion")}


def default_pipelines() -> dict[str, PipelineSettings]:
    """Cord and lesions by our model; and for axial T2w / T2*w, lesions by SCT's model of that contrast
    inside our cord (off, with a log line, where SCT's files are not found)."""
    return {"spinal_cord": PipelineSettings(),
            "ms_axial_t2": PipelineSettings(lesion_model="sct_t2_ax_lesion"),
            "ms_axial_t2s": PipelineSettings(lesion_model="sct_t2s_lesion")}


@dataclass
class Config:
    node: NodeSettings = field(default_factory=NodeSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    completion: CompletionSettings = field(default_factory=CompletionSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    models: dict[str, ModelSettings] = field(default_factory=lambda: default_models())
    pipelines: dict[str, PipelineSettings] = field(default_factory=lambda: default_pipelines())
    destinations: dict[str, DestinationSettings] = field(default_factory=dict)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    routing: list[dict[str, Any]] = field(default_factory=list)  # validated by dicom_node.routing
    security: SecuritySettings = field(default_factory=SecuritySettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    web: WebSettings = field(default_factory=WebSettings)
    source: Path | None = None  # the file it came from

    @property
    def data_dir(self) -> Path:
        return self._resolve(self.storage.data_dir)

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite"

    def path(self, p: str) -> Path:
        """A path setting, resolved against the config file's folder when relative."""
        return self._resolve(p)

    def _resolve(self, p: str) -> Path:
        path = Path(p).expanduser()
        if not path.is_absolute() and self.source is not None:
            path = self.source.parent / path
        return path.resolve()

    def model_spec(self, key: str) -> ModelSpec:
        """The model of a `models` entry: builtin:NAME or the folder, relative paths resolved, with
        an nnU-Net entry's settings that differ from the defaults."""
        m = self.models[key]
        if m.path.startswith("builtin:"):
            return ModelSpec.of(m.path)
        return ModelSpec.of(self._resolve(m.path), **_nnunet_options(m))

    def model_path(self, key: str) -> str:
        """``model_spec``'s text form: FOLDER?key=value&... (for logs, /health and the model cache)."""
        return str(self.model_spec(key))

    def lesion_model_spec(self, key: str) -> LesionModelSpec:
        """The SCT lesion model of a `models` entry (path sct:NAME), its folders resolved."""
        return LesionModelSpec(self.models[key].path, tuple(str(self.path(d)) for d in _folders(self.models[key])))

    def analysis_request(self, pipeline: str) -> AnalysisRequest:
        """What inference runs for a job of `pipeline`: its model (and SCT's lesion model, if it
        names one), the worker's device, its settings."""
        p = self.pipelines[pipeline]
        return AnalysisRequest(model=self.model_spec(p.model), device=self.worker.device,
                               settings=AnalysisSettings(min_lesion_volume_mm3=p.min_lesion_volume_mm3),
                               lesion_model=self.lesion_model_spec(p.lesion_model) if p.lesion_model else None)

    def pipelines_off(self) -> dict[str, str]:
        """Pipelines that cannot run here, with why: their SCT lesion model's files are not found
        and no sct_data_dir was set (where one is set, a missing file stops the config instead)."""
        off: dict[str, str] = {}
        for name, p in self.pipelines.items():
            if p.lesion_model and p.lesion_model not in self.models:
                off[name] = f"its lesion_model {p.lesion_model!r} is not a key of models"
            elif p.lesion_model:
                try:
                    self.lesion_model_spec(p.lesion_model).files()
                except ValueError as exc:
                    off[name] = (f"{exc} (set models.{p.lesion_model}.sct_data_dir to the folder holding "
                                 "Spinal Cord Toolbox's model files, or SCT_DIR)")
        return off

    def routing_rules(self) -> list[Rule]:
        """The rules in force: a rule whose pipeline is off (pipelines_off) is left out, so its series
        go to the next rule that matches."""
        from dicom_node.routing import parse_rules

        off = self.pipelines_off()
        return [rule for rule in parse_rules(self.routing) if rule.pipeline not in off]

    def pipeline_model_paths(self) -> list[str]:
        """The model specs the pipelines that are on use, each once (what the node loads at start)."""
        off = self.pipelines_off()
        return sorted({self.model_path(p.model) for name, p in self.pipelines.items() if name not in off})

    def pipeline_lesion_models(self) -> dict[str, LesionModelSpec]:
        """The SCT lesion models of the pipelines that are on, by models key."""
        off = self.pipelines_off()
        return {p.lesion_model: self.lesion_model_spec(p.lesion_model)
                for name, p in self.pipelines.items() if p.lesion_model and name not in off}


def _folders(m: ModelSettings) -> list[str]:
    """A models entry's sct_data_dir as a list (one folder or several; [] when unset)."""
    value = m.sct_data_dir
    if isinstance(value, list):
        return list(value)
    return [value] if value else []


def _nnunet_options(m: ModelSettings) -> dict[str, Any]:
    """The nnU-Net settings of a models entry that differ from their defaults."""
    defaults = ModelSettings()
    return {k: getattr(m, k) for k in NNUNET_OPTIONS if getattr(m, k) != getattr(defaults, k)}


def _check(value: Any, tp: Any, key: str) -> Any:
    """Convert/validate one YAML value against a type hint; raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a hint is a class, never an instance
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        _, vt = typing.get_args(tp)
        # `name:` with nothing under it means an all-defaults section, but only for settings
        # sections: a free-form null (a routing rule's `pipeline: null`) stays None
        fill = dataclasses.is_dataclass(vt)
        return {str(k): _check({} if v is None and fill else v, vt, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        (it,) = typing.get_args(tp)
        return [_check(v, it, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown setting {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _check(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _validate(cfg: Config) -> None:
    n = cfg.node
    if not 1 <= len(n.ae_title) <= 16 or "\\" in n.ae_title:
        raise ConfigError("node.ae_title: 1 to 16 characters, no backslash")
    if not 0 <= n.port <= 65535:
        raise ConfigError(f"node.port: {n.port} is not a TCP port")
    if n.max_associations < 1:
        raise ConfigError("node.max_associations: must be at least 1")
    if cfg.worker.device != "auto" and cfg.worker.device != "cpu" and not cfg.worker.device.startswith("cuda"):
        raise ConfigError(f"worker.device: {cfg.worker.device!r} is not auto, cpu, cuda or cuda:N")
    for name, m in cfg.models.items():
        _validate_model(cfg, name, m)
    for name, p in cfg.pipelines.items():
        if p.model not in cfg.models:
            raise ConfigError(f"pipelines.{name}.model: {p.model!r} is not a key of models ({', '.join(cfg.models)})")
        if cfg.models[p.model].path.startswith(SCT_PREFIX):
            raise ConfigError(f"pipelines.{name}.model: {p.model!r} is one of SCT's lesion models, which draw lesions "
                              "only: name it as lesion_model, and a cord model (e.g. default) as model")
        _validate_lesion_model(cfg, name, p)
        try:
            check_min_volume(p.min_lesion_volume_mm3, f"pipelines.{name}.min_lesion_volume_mm3")
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    for name, d in cfg.destinations.items():
        if not 1 <= len(d.ae_title) <= 16:
            raise ConfigError(f"destinations.{name}.ae_title: 1 to 16 characters")
        check_settings(d.dicomweb, d.tls, cfg.path, key=f"destinations.{name}")
        if d.viewer not in VIEWERS:
            raise ConfigError(f"destinations.{name}.viewer: {d.viewer!r} is not one of {', '.join(VIEWERS)}")
        if d.viewer == "ohif" and d.seg_fractional:
            raise ConfigError(f"destinations.{name}.seg_fractional: OHIF does not show a soft (fractional) SEG; "
                              "set it to false for viewer: ohif, or send the soft cord to a generic destination")
    if cfg.dispatch.max_attempts < 1:
        raise ConfigError("dispatch.max_attempts: must be at least 1")
    if cfg.completion.idle_seconds <= 0:
        raise ConfigError("completion.idle_seconds: must be positive")
    r = cfg.retention
    for key in ("finished_days", "failed_days"):
        if not (math.isfinite(getattr(r, key)) and getattr(r, key) >= 0):
            raise ConfigError(f"retention.{key}: must be 0 (keep for ever) or a positive number of days")
    if not (math.isfinite(r.interval_s) and r.interval_s > 0):
        raise ConfigError("retention.interval_s: must be a positive number of seconds")
    if DiskThreshold.parse(r.max_stored, "retention.max_stored").percent:
        raise ConfigError("retention.max_stored: a size (bytes, '500GB', '2TiB'), not a percentage")
    if cfg.logging.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError("logging.level: DEBUG, INFO, WARNING or ERROR")
    if cfg.worker.executor not in {"local", "ray"}:
        raise ConfigError(f"worker.executor: {cfg.worker.executor!r} is not local or ray")
    if cfg.worker.ray.actors < 1 or cfg.worker.ray.actor_cpus < 0 or cfg.worker.ray.actor_gpus < 0:
        raise ConfigError("worker.ray: actors must be at least 1, actor_cpus and actor_gpus not negative")
    if cfg.logging.format not in {"text", "json"}:
        raise ConfigError(f"logging.format: {cfg.logging.format!r} is not text or json")
    w = cfg.web
    if not 0 <= w.port <= 65535:
        raise ConfigError(f"web.port: {w.port} is not a TCP port")
    if w.enabled and w.host not in {"127.0.0.1", "::1", "localhost"} and len(w.token) < 16:
        raise ConfigError(f"web.token: set a token of at least 16 characters when web.host is {w.host!r} "
                          "(not loopback), or bind web.host to 127.0.0.1")
    if w.enabled and w.token.upper().startswith("REPLACE-ME"):
        raise ConfigError("web.token: still the placeholder; set a random one (openssl rand -hex 24)")
    if w.status_limit < 1:
        raise ConfigError("web.status_limit: must be at least 1")
    # security owns its checks (peers, classes, TLS files)
    validate_security(cfg.security, {name: d.tls for name, d in cfg.destinations.items()}, cfg.path)
    # routing owns the rule grammar; imported here, not at the top: it pulls in pydicom
    from dicom_node.routing import parse_rules

    rules = parse_rules(cfg.routing)
    for rule in rules:
        if rule.pipeline is not None and rule.pipeline not in cfg.pipelines:
            raise ConfigError(f"routing rule {rule.name!r}: pipeline {rule.pipeline!r} is not a key of pipelines")
        for dest in rule.destinations:
            if dest not in cfg.destinations:
                raise ConfigError(f"routing rule {rule.name!r}: destination {dest!r} is not a key of destinations")


def _validate_model(cfg: Config, name: str, m: ModelSettings) -> None:
    """An nnU-Net entry is checked against its folder now (folds, checkpoint, configuration,
    labels: JSON and file names, nothing unpickled), so a wrong setting stops the node at start
    with the key named, not the first job."""
    if m.path.startswith(SCT_PREFIX):
        _validate_sct_model(cfg, name, m)
        return
    if m.sct_data_dir:
        raise ConfigError(f"models.{name}.sct_data_dir: only SCT lesion models ({SCT_PREFIX}NAME) take it; "
                          f"{m.path} is not one (remove the setting)")
    options = _nnunet_options(m)
    for key in ("folds", "cord_labels", "lesion_labels"):
        for i, v in enumerate(getattr(m, key)):
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ConfigError(f"models.{name}.{key}[{i}]: expected a number or a name, got {v!r}")
    if m.path.startswith("builtin:"):
        folder = None
    else:
        folder = cfg.path(m.path)
        if (folder / "model.json").is_file():
            folder = None
    if folder is None:
        if options:
            key = next(iter(options))
            raise ConfigError(f"models.{name}.{key}: only nnU-Net v2 folders take {key}; {m.path} is a "
                              "model.json model (remove the setting)")
        return
    nnunet_files = (folder / "plans.json").is_file() or (folder.is_dir() and any(
        (p / "plans.json").is_file() for p in folder.iterdir() if p.is_dir()))
    if not nnunet_files and not options:
        return  # a model folder that is not there (yet): /health reports it, as for model.json folders
    if not folder.exists():
        w = cfg.worker
        if w.executor == "ray" and w.ray.address:
            return  # on a Ray cluster the folder may live on the workers only; their load says what is wrong
        raise ConfigError(f"models.{name}.path: {folder} does not exist")
    try:
        check_nnunet_settings(ModelSpec.of(folder, **options))  # torch-free: JSON and file names
    except SettingError as exc:
        raise ConfigError(f"models.{name}.{exc.key}: {exc}") from None
    except ValueError as exc:  # ModelError: the folder itself is broken (bad JSON, unsupported plans)
        raise ConfigError(f"models.{name}.path: {exc}") from None


def _validate_lesion_model(cfg: Config, name: str, p: PipelineSettings) -> None:
    """A pipeline's lesion_model names an SCT model entry. A shipped SCT pipeline under a file whose
    own `models` leaves SCT out is no error: it is off (Config.pipelines_off)."""
    if not p.lesion_model or (p.lesion_model not in cfg.models and default_pipelines().get(name) == p):
        return
    if p.lesion_model not in cfg.models:
        raise ConfigError(f"pipelines.{name}.lesion_model: {p.lesion_model!r} is not a key of models "
                          f"({', '.join(cfg.models)})")
    if not cfg.models[p.lesion_model].path.startswith(SCT_PREFIX):
        raise ConfigError(f"pipelines.{name}.lesion_model: {p.lesion_model!r} must be an SCT lesion model "
                          f"(path: {SCT_PREFIX}NAME, one of {', '.join(SCT_MODEL_NAMES)})")


def _validate_sct_model(cfg: Config, name: str, m: ModelSettings) -> None:
    """An sct:NAME entry: a known name, no nnU-Net keys, and its files in sct_data_dir when one is set
    (unset, the pipelines using it are off where $SCT_DIR/data lacks them: Config.pipelines_off)."""
    if m.path not in SCT_MODEL_NAMES:
        raise ConfigError(f"models.{name}.path: unknown SCT model {m.path!r} (known: {', '.join(SCT_MODEL_NAMES)})")
    options = _nnunet_options(m)
    if options:
        raise ConfigError(f"models.{name}.{next(iter(options))}: only nnU-Net v2 folders take it; {m.path} is one "
                          "of SCT's lesion models (remove the setting)")
    value = m.sct_data_dir
    if not (isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) and v for v in value))):
        raise ConfigError(f"models.{name}.sct_data_dir: a folder or a list of folders, got {value!r}")
    if _folders(m):
        try:
            cfg.lesion_model_spec(name).files()
        except ValueError as exc:
            raise ConfigError(f"models.{name}.sct_data_dir: {exc}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate the YAML config: explicit path, else $DICOM_NODE_CONFIG, else the default."""
    chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(chosen.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {chosen} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {chosen} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {chosen}: top level must be a mapping")
    cfg = _build(Config, raw, "")
    cfg.source = chosen.resolve()
    _validate(cfg)
    return cfg
