"""The model variants: every fact that differs between the two-modality and the single-modality preview
policy, in one spec each (docs/UPSTREAM.md §4 and §5).

Code asks the spec (``variants.get(cfg["variant"])``) and never compares variant names: the batch's feature
keys and the dataset's feature folders, the feature width, upstream's weight names,
parameter groups and gradient paths, the per-video outputs and how they are exported and plotted, the
metric conventions and upstream's log and summary lines. This module imports nothing of the project: every
other module may ask it. Adding a variant is one `Variant` here plus its model code (a policy module, listed
by the variant's name in `l2l_jax.model.POLICIES`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: (kind, upstream module prefix, Flax module path) rows of upstream's state dict; `l2l_jax.torch_names` expands
#: the kinds ("linear", "query", "keyconv", "lstm") into tensors
WeightRow = tuple[str, str, tuple[str, ...]]

#: the fusion net and the classifier (upstream's ImageAudioClassify container, the released ImageAudioNet)
FUSION_CLASSIFIER: tuple[WeightRow, ...] = (
    ("linear", "net_imageAudio.imageAudio_fc1", ("net_imageAudio", "imageAudio_fc1")),
    ("linear", "net_imageAudio.imageAudio_fc2", ("net_imageAudio", "imageAudio_fc2")),
    ("linear", "net_classifier.classifier", ("net_classifier", "classifier")),
)
#: the top-level modules of the fusion net + classifier model
FUSION_MODULES = ("net_imageAudio", "net_classifier")
#: the model kind of the fusion net + classifier alone (upstream's released ImageAudioNet), not a policy variant
IMAGEAUDIONET = "imageaudionet"
FUSION_WIDTH = 512  # the fusion net's image, audio and fused feature width
#: the folder of the fusion net's (fused) features: upstream's pickles name each video's file in it, and every
#: variant's feature files are found by replacing it with the variant's own folders (`feature_dirs`)
TEMPLATE_DIR = "imageAudio_features"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One preview-policy variant. Fields are facts of upstream's code for that variant."""

    name: str  # the --variant value, recorded in meta.json and packs
    title: str
    # data
    modalities: tuple[str, ...]  # batch keys of the feature arrays, in the model's argument order
    feature_dirs: tuple[str, ...]  # upstream's feature folders, one per modality (same order)
    fixed_width: int | None  # feature width D, or None: --embedding_size
    data_subsample: bool  # --feature_subsample keeps every s-th clip when reading (§1)
    random_fill: bool  # collate fills short videos with random clips rather than copies (§2)
    batch_independent: bool  # a video's result does not depend on its batch (so evaluation may sort)
    # model (the policy module of each variant: `l2l_jax.model.POLICIES`)
    fusion: bool  # has the fusion net: --weights_audioImageModel loads into it, baselines fuse clips
    weight_table: tuple[WeightRow, ...]  # upstream's state-dict rows, in upstream's order
    modules: tuple[str, ...]  # top-level parameter modules, in upstream's registration order
    # training (§6)
    freeze_groups: tuple[tuple[str, float], ...]  # --freeze_imageAudioNet: (module, lr factor), in group order
    avgpool_uses: frozenset[str]  # modules on the avgpool logits' gradient path
    lstm_uses: frozenset[str]  # modules on the last step logits' gradient path
    attention_modules: frozenset[str]  # added to a loss's path when a soft attended feature reaches it
    avgpool_attends: bool  # whether the avgpool loss consumes attended features
    loss_weights: bool  # --avgpool_ce_loss_weight / --lstm_ce_loss_weight exist
    trains_hard: bool  # --gt_feature_eval makes training hard too (§5)
    # outputs and reports
    policy_outputs: tuple[str, ...]  # the per-video outputs the evaluator keeps
    export_outputs: tuple[str, ...]  # written per video by --export
    timeline_rows: tuple[tuple[str, str], ...]  # (label, output) rows of a timeline plot
    chosen: tuple[str, ...]  # outputs holding the clips fed back in hard mode
    chosen_with_audio_index: str | None  # also fed back with --hard_audio_index (quirk 10)
    steps_output: str | None  # output with the number of steps a video took, if the episode can stop early
    metrics_softmax: str  # softmax of upstream's mAP ("naive" or "stable", `l2l_jax.metrics`)
    gt_metrics: bool  # upstream reports its "gt" accuracy/mAP of the chosen raw features
    summary_template: str  # upstream's evaluation summary (str.format of the result's fields)
    epoch_log_templates: tuple[str, ...]  # upstream's validation lines in epoch.log
    gt_log_template: str | None  # the extra validation line when the gt mAP is known
    flag_defaults: tuple[tuple[str, Any], ...] = ()  # the variant's own opts.py defaults, where they differ

    def width(self, embedding_size: int | None = None) -> int:
        """Feature width D: fixed, or --embedding_size."""
        if self.fixed_width is not None:
            return self.fixed_width
        if embedding_size is None:
            raise ValueError(f"the {self.name!r} variant takes its feature width from --embedding_size")
        return int(embedding_size)


_TWO_ATTENTION = frozenset({"image_queryfeature_mlp", "audio_queryfeature_mlp", "image_key_conv1x1",
                            "audio_key_conv1x1", "modality_attention", "rnn"})

TWO = Variant(
    name="two",
    title="two-modality (image + audio)",
    modalities=("image", "audio"),
    feature_dirs=("image_features", "audio_features"),
    fixed_width=512,
    data_subsample=True,
    random_fill=False,
    batch_independent=True,
    fusion=True,
    weight_table=FUSION_CLASSIFIER + (
        ("query", "image_queryfeature_mlp", ("image_queryfeature_mlp",)),
        ("query", "audio_queryfeature_mlp", ("audio_queryfeature_mlp",)),
        ("linear", "prediction_fc", ("prediction_fc",)),
        ("keyconv", "image_key_conv1x1", ("image_key_conv1x1",)),
        ("keyconv", "audio_key_conv1x1", ("audio_key_conv1x1",)),
        ("lstm", "rnn", ("rnn",)),
        ("linear", "modality_attention", ("modality_attention",)),
    ),
    modules=("net_imageAudio", "net_classifier", "image_queryfeature_mlp", "audio_queryfeature_mlp",
             "prediction_fc", "image_key_conv1x1", "audio_key_conv1x1", "rnn", "modality_attention"),
    # the policy's own modules in registration order, the classifier at 0.1 lr, the fusion net at lr 0;
    # modality_attention is in no group (quirk 12)
    freeze_groups=(("image_queryfeature_mlp", 1.0), ("audio_queryfeature_mlp", 1.0), ("prediction_fc", 1.0),
                   ("image_key_conv1x1", 1.0), ("audio_key_conv1x1", 1.0), ("rnn", 1.0),
                   ("net_classifier", 0.1), ("net_imageAudio", 0.0)),
    # avgpool: the fused step inputs (start + E-1 attended features); lstm: prediction_fc of the last state
    avgpool_uses=frozenset({"net_imageAudio", "net_classifier"}),
    lstm_uses=frozenset({"net_imageAudio", "rnn", "prediction_fc"}),
    attention_modules=_TWO_ATTENTION,
    avgpool_attends=True,
    loss_weights=True,
    trains_hard=False,
    policy_outputs=("avgpool_logits", "lstm_logits", "image_idx", "audio_idx", "modality_w", "start_idx"),
    export_outputs=("image_idx", "audio_idx", "modality_w"),
    timeline_rows=(("image", "image_idx"), ("audio", "audio_idx")),
    chosen=("image_idx",),  # hard mode indexes both banks with the image index by default (quirk 10)
    chosen_with_audio_index="audio_idx",
    steps_output=None,
    metrics_softmax="naive",
    gt_metrics=False,
    summary_template=("Testing Summary for checkpoint: {checkpoint}\nAvgpool Acc: {avgpool_acc_pct} \n"
                      " LSTM Acc: {lstm_acc_pct} \n Avgpool mAP: {avgpool_map} \n LSTM mAP: {lstm_map}"),
    epoch_log_templates=("Final accuracy from avgpooling at epoch {epoch}: {avgpool_acc}",
                         "Final accuracy from lstm final prediction at epoch {epoch}: {lstm_acc}",
                         "mAP from avgpooling at epoch {epoch}: {avgpool_map}",
                         "mAP from lstm final prediction at epoch {epoch}: {lstm_map}\n"),
    gt_log_template=None,
)

SINGLE = Variant(
    name="single",
    title="single-modality",
    modalities=("features",),
    feature_dirs=("r2plus1d152_features",),
    fixed_width=None,
    data_subsample=False,
    random_fill=True,
    batch_independent=False,  # random fills and the early break are per batch
    fusion=False,
    weight_table=(
        ("linear", "net_classifier.classifier", ("net_classifier", "classifier")),
        ("query", "queryfeature_mlp", ("queryfeature_mlp",)),
        ("linear", "prediction_fc", ("prediction_fc",)),
        ("keyconv", "key_conv1x1", ("key_conv1x1",)),
        ("lstm", "rnn", ("rnn",)),
    ),
    modules=("net_classifier", "queryfeature_mlp", "prediction_fc", "key_conv1x1", "rnn"),
    freeze_groups=(("queryfeature_mlp", 1.0), ("prediction_fc", 1.0), ("key_conv1x1", 1.0), ("rnn", 1.0),
                   ("net_classifier", 1.0)),
    # avgpool: the E soft attended features always depend on the query, keys and rnn; lstm: the last state,
    # whose input is a soft attended feature unless hard
    avgpool_uses=frozenset({"net_classifier", "queryfeature_mlp", "key_conv1x1", "rnn"}),
    lstm_uses=frozenset({"rnn", "prediction_fc"}),
    attention_modules=frozenset({"queryfeature_mlp", "key_conv1x1"}),
    avgpool_attends=False,
    loss_weights=False,
    trains_hard=True,
    policy_outputs=("avgpool_logits", "lstm_logits", "idx", "start_idx", "selected_gt_mean", "steps_taken"),
    export_outputs=("idx", "steps_taken"),
    timeline_rows=(("clip", "idx"),),
    chosen=("idx",),
    chosen_with_audio_index=None,
    steps_output="steps_taken",
    metrics_softmax="stable",
    gt_metrics=True,
    summary_template=("Testing Summary for checkpoint: {checkpoint}\nvideo accuracy/mAP/gt mAP: "
                      "{avgpool_acc_pct} \t {avgpool_map_pct} \t {gt_map_pct}\n"),
    epoch_log_templates=("Final accuracy from avgpooling at epoch {epoch}: {avgpool_acc}",
                         "Final accuracy from lstm  at epoch {epoch}: {lstm_acc}",
                         "mAP from avgpooling at epoch {epoch}: {avgpool_map}",
                         "mAP from lstm at epoch {epoch}: {lstm_map}"),
    gt_log_template="mAP from gt predictions at epoch {epoch}: {gt_map}\n",  # the gt mAP only (quirk 19)
    flag_defaults=(("subsample_factor", 2), ("warmup_epochs", 10), ("hidden_size", 1024)),  # its own opts.py (§6)
)

VARIANTS: dict[str, Variant] = {v.name: v for v in (TWO, SINGLE)}
#: the --variant values
NAMES = tuple(VARIANTS)
#: the variant programs default to
DEFAULT = TWO


#: every kind of model weights: the policy variants and the fusion net + classifier
MODEL_KINDS = (*NAMES, IMAGEAUDIONET)

#: each variant's batch keys and feature folders, by name
MODALITY_KEYS: dict[str, tuple[str, ...]] = {v.name: v.modalities for v in VARIANTS.values()}
MODALITY_DIRS: dict[str, tuple[str, ...]] = {v.name: v.feature_dirs for v in VARIANTS.values()}
#: every batch key that holds features, over all variants (in variant order)
FEATURE_KEYS: tuple[str, ...] = tuple(dict.fromkeys(k for v in VARIANTS.values() for k in v.modalities))
#: every feature folder of a dataset in upstream's layout: the variants' folders and the fused features
FEATURE_DIRS: tuple[str, ...] = (*TWO.feature_dirs, TEMPLATE_DIR, *SINGLE.feature_dirs)


def batch_modalities(batch: Any) -> tuple[str, ...]:
    """The feature keys of a batch (a mapping holding one variant's `modalities`), in the model's argument
    order."""
    for spec in VARIANTS.values():
        if spec.modalities[0] in batch:
            return spec.modalities
    raise ValueError(f"the batch holds no variant's features: expected the keys of one of {MODALITY_KEYS}")


def model_width(kind: str, feature_dim: int | None = None) -> int:
    """The feature width of a model kind (`MODEL_KINDS`); `feature_dim` is the recorded one, used where the
    variant's width is not fixed."""
    return FUSION_WIDTH if kind == IMAGEAUDIONET else get(kind).width(feature_dim)


def holds(stored: str, wanted: str) -> bool:
    """Whether weights of model kind `stored` serve a model of kind `wanted`: the same kind, or any variant
    with the fusion net serves the fusion net + classifier."""
    return stored == wanted or (wanted == IMAGEAUDIONET and stored in VARIANTS and VARIANTS[stored].fusion)


def get(variant: str | Variant) -> Variant:
    """The spec of a variant name (a `Variant` is returned as it is)."""
    if isinstance(variant, Variant):
        return variant
    try:
        return VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError(f"unknown variant {variant!r}: expected one of {NAMES}") from None


__all__ = ["DEFAULT", "FEATURE_DIRS", "FEATURE_KEYS", "FUSION_CLASSIFIER", "FUSION_MODULES", "FUSION_WIDTH",
           "IMAGEAUDIONET", "MODALITY_DIRS", "MODALITY_KEYS", "MODEL_KINDS", "NAMES", "SINGLE", "TEMPLATE_DIR", "TWO",
           "VARIANTS", "Variant", "WeightRow", "batch_modalities", "get", "holds", "model_width"]
