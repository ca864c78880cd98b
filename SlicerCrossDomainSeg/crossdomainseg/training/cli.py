"""`crossdomainseg train all|source|translator|settings`: train a bundle from a task directory or any
folders, and record the settings chosen on its validation split.

  crossdomainseg train all --source-images SRC_IMG --source-labels SRC_LAB --target-images TGT_IMG \
      --out BUNDLE [--budget-minutes 90]
  (plans grid, patch and normalisation from the data, then trains the reference, its domain-
  randomised fine-tune, the translator and the curriculum on the target images: train_all.py)

  crossdomainseg train source --images SRC_IMG --labels SRC_LAB --out BUNDLE \
      --source-modality CT --target-modality MR --spacing 3
  crossdomainseg train translator --bundle BUNDLE --source-images SRC_IMG --source-labels SRC_LAB \
      --target-images TGT_IMG
  (or --task-dir DIR instead of the folders, for data made by `crossdomainseg data make`)

Both are seeded, show a progress bar on a terminal (one line per epoch), log losses per epoch into the bundle's metadata and resume
from their last checkpoint with --resume. `train source` writes fresh metadata, so the settings
(SETTINGS) are written again afterwards, by hand or chosen on the SOURCE validation split:

  crossdomainseg train settings --bundle BUNDLE --json '{"postprocess": [{"step": "remove_islands", "min_fraction": 0.2}]}'
  crossdomainseg train settings --bundle BUNDLE --task-dir DIR --choose-postprocess --calibrate-hints
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from ..device import configure
from ..errors import InputError
from ..imageio import read_image
from .datasets import check_integer_labels, labelled_cases, read_task, task_cases, unlabelled_cases
from .source import SourceConfig, train_source
from .translator import TranslatorConfig, train_translator

# How each modality's intensities are normalised unless --source-norm/--target-norm say otherwise:
# CT in a fixed HU window (soft tissue and bone contrast), everything else by per-image percentiles.
DEFAULT_NORMALIZATION = {"CT": {"kind": "window", "low": -400, "high": 600}}
PERCENTILE = {"kind": "percentile", "lower": 1, "upper": 99}


def default_normalization(modality: str) -> dict:
    return dict(DEFAULT_NORMALIZATION.get(modality.upper(), PERCENTILE))


def parse_normalization(text: str) -> dict:
    """`window:LOW:HIGH`, `percentile:LOWER:UPPER` or `minmax`."""
    parts = text.split(":")
    try:
        if parts[0] == "window" and len(parts) == 3:
            return {"kind": "window", "low": float(parts[1]), "high": float(parts[2])}
        if parts[0] == "percentile" and len(parts) == 3:
            return {"kind": "percentile", "lower": float(parts[1]), "upper": float(parts[2])}
        if parts == ["minmax"]:
            return {"kind": "minmax"}
    except ValueError:
        pass
    raise InputError(f"Bad normalisation {text!r}: use window:LOW:HIGH, percentile:LOWER:UPPER or minmax.")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"Expected comma-separated integers, got {text!r}.") from None


def _command(args) -> str:
    """An equivalent command line, rebuilt from the parsed options (recorded in the bundle)."""
    words = ["crossdomainseg", "train", args.stage]
    for key, value in vars(args).items():
        if key in ("func", "command", "stage") or value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return " ".join(shlex.quote(w) for w in words)


def _per_axis(values, dims, what):
    values = list(values)
    if len(values) == 1:
        values *= dims
    if len(values) != dims:
        raise InputError(f"{what} needs 1 or {dims} values, got {values}.")
    return values


def _label_names(text: str | None, cases) -> dict:
    if text:
        try:
            pairs = [item.split("=") for item in text.split(",")]
            labels = {name.strip(): int(value) for name, value in pairs}
        except ValueError:
            raise InputError(f"--label-names must look like liver=1,spleen=2; got {text!r}.") from None
    else:  # name the values found in the label maps
        found = set()
        for _, _, label in cases:
            values = np.unique(_array(label))
            check_integer_labels(values, label)
            found |= set(values.tolist())
        labels = {f"label_{v}": int(v) for v in sorted(found) if v != 0}
    return {"background": 0, **{k: v for k, v in labels.items() if v != 0}}


def _array(path):
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(read_image(path))


def _source_inputs(args):
    """(train cases, val cases, task dict or None) from --task-dir or the folder arguments."""
    if args.task_dir:
        task = read_task(args.task_dir)
        return (task_cases(args.task_dir, "train", "source"),
                task_cases(args.task_dir, "val", "source"), task)
    if not (args.images and args.labels):
        raise InputError("Give --task-dir, or --images and --labels (source images and label maps).")
    val = labelled_cases(args.val_images, args.val_labels) if args.val_images else []
    return labelled_cases(args.images, args.labels), val, None


def run_source(args) -> int:
    configure(args.threads)
    train, val, task = _source_inputs(args)
    first = read_image(train[0][1])
    dims = args.dims or (task or {}).get("spatial_dims") or (2 if first.GetSize()[2] == 1 else 3)
    src_mod = args.source_modality or (task or {}).get("source_modality") or "source"
    tgt_mod = args.target_modality or (task or {}).get("target_modality") or "target"
    labels = task["labels"] if task and not args.label_names else _label_names(args.label_names, train)
    if args.spacing:
        spacing = _per_axis(args.spacing, dims, "--spacing")
    else:  # the median spacing of the training images
        spacings = np.array([read_image(c[1]).GetSpacing()[:dims] for c in train])
        spacing = np.median(spacings, axis=0).round(3).tolist()
    config = SourceConfig(
        task=args.task or (task or {}).get("task") or "custom",
        labels=labels,
        colors=(task or {}).get("colors", {}),
        spatial_dims=dims,
        spacing=[float(s) for s in spacing],
        roi_size=_per_axis(_ints(args.roi), dims, "--roi"),
        normalization={
            "source": parse_normalization(args.source_norm) if args.source_norm else default_normalization(src_mod),
            "target": parse_normalization(args.target_norm) if args.target_norm else default_normalization(tgt_mod),
        },
        input_modality=tgt_mod,
        output_modality=src_mod,
        channels=_ints(args.channels),
        strides=[2] * (len(_ints(args.channels)) - 1),
        num_res_units=args.res_units,
        rotated_copies=args.rotated_copies,
        max_degrees=args.max_degrees,
        intensity_remap=args.intensity_remap,
        class_balanced=args.class_balanced,
        label_contrast=args.label_contrast,
        domain_randomize=args.domain_randomize,
        init_from=str(args.init_from or ""),
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        seed=args.seed,
        version=args.version,
        data=(f"task dir {Path(args.task_dir).name} (seed {task.get('seed')}, {len(train)} train / "
              f"{len(val)} val source cases)" if task else
              f"{len(train)} labelled {src_mod} images from {args.images}"),
    )
    bundle = train_source(config, train, val, args.out, args.checkpoint_dir, args.resume,
                          args.device, not args.no_progress, _command(args))
    print(f"bundle written: {bundle.path} (metrics {bundle.metrics})")
    return 0


def run_translator(args) -> int:
    configure(args.threads)
    if args.task_dir:
        source = task_cases(args.task_dir, "train", "source")
        target = task_cases(args.task_dir, "train", "target", labelled=False)
        val = task_cases(args.task_dir, "val", "target")
        val = [c for c in val if c[2] is not None][: args.val_cases]
    elif args.source_images and args.source_labels and args.target_images:
        source = labelled_cases(args.source_images, args.source_labels)
        target = unlabelled_cases(args.target_images)
        val = labelled_cases(args.val_target_images, args.val_target_labels) if args.val_target_images else []
        val = val[: args.val_cases]
    else:
        raise InputError("Give --task-dir, or --source-images, --source-labels and --target-images.")
    from ..bundle import load_bundle

    dims = load_bundle(args.bundle).spatial_dims
    config = TranslatorConfig(
        patch_size=_per_axis(_ints(args.patch), dims, "--patch"),
        generator_channels=args.gen_channels, n_down=args.n_down, n_blocks=args.blocks,
        stem_kernel=args.stem_kernel, residual=args.residual,
        discriminator_channels=args.disc_channels, discriminator_layers=args.disc_layers,
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch, lr=args.lr,
        lambda_cycle=args.lambda_cycle, lambda_identity=args.lambda_identity,
        lambda_seg=args.lambda_seg, lambda_semantic=args.lambda_semantic,
        lambda_class_intensity=args.lambda_class_intensity, seed=args.seed,
        rotated_copies=args.rotated_copies, max_degrees=args.max_degrees,
        average_decay=args.average_decay, norm=args.norm,
        seg_detached=args.seg_detached, seg_noise=args.seg_noise,
    )
    bundle = train_translator(args.bundle, config, source, target, val, args.checkpoint_dir,
                              args.resume, args.device, not args.no_progress, _command(args), args.version)
    print(f"generator written to {bundle.path} (metrics {bundle.metrics})")
    return 0


def _all_inputs(args):
    """TaskData for `train all` from --task-dir or the three folders."""
    from .train_all import TaskData, split_validation

    if args.task_dir:
        task = read_task(args.task_dir)
        target_val = [c for c in task_cases(args.task_dir, "val", "target") if c[2] is not None][:2]
        train = task_cases(args.task_dir, "train", "source")
        return TaskData(
            source_train=train, source_val=task_cases(args.task_dir, "val", "source"),
            target=task_cases(args.task_dir, "train", "target", labelled=False), target_val=target_val,
            labels=task["labels"] if not args.label_names else _label_names(args.label_names, train),
            colors=task.get("colors", {}), task=args.task or task.get("task", "custom"),
            source_modality=args.source_modality or task.get("source_modality", "source"),
            target_modality=args.target_modality or task.get("target_modality", "target"),
            description=f"task dir {Path(args.task_dir).name} (seed {task.get('seed')})")
    if not (args.source_images and args.source_labels and args.target_images):
        raise InputError("Give --source-images, --source-labels and --target-images (or --task-dir).")
    source = labelled_cases(args.source_images, args.source_labels)
    train, val = split_validation(source, args.val_share, args.seed)
    target = unlabelled_cases(args.target_images)
    return TaskData(
        source_train=train, source_val=val, target=target,
        labels=_label_names(args.label_names, source), task=args.task or "custom",
        source_modality=args.source_modality or "source", target_modality=args.target_modality or "target",
        description=(f"{len(train)} train / {len(val)} validation labelled images from {args.source_images}, "
                     f"{len(target)} unlabelled target images from {args.target_images}"))


def run_all(args) -> int:
    from .train_all import train_all

    configure(args.threads)
    bundle = train_all(_all_inputs(args), args.out, args.budget_minutes, args.checkpoint_dir,
                       args.resume, args.device, args.steps, args.seed, args.version,
                       args.domain_randomize, not args.no_progress, _command(args),
                       randomize=args.randomize, stages=args.stages)
    print(f"bundle written: {bundle.path}")
    return 0


# Bundle metadata a user or a source validation run chooses, not a trainer: postprocess.py's
# steps, the Logic's uncertainty hint bands, curriculum.params.CurriculumParams.for_bundle.
SETTINGS = ("postprocess", "uncertainty_hints", "curriculum_params")


def _json_settings(text: str) -> dict:
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"--json is not valid JSON: {error}") from None
    if not isinstance(settings, dict) or not settings or set(settings) - set(SETTINGS):
        raise InputError(f"--json must be an object with some of the keys {', '.join(SETTINGS)}; got {text}")
    return settings


def source_settings(bundle_path, task_dir, choose_postprocess: bool, calibrate_hints: bool,
                    threads=None, command: str = "", log=print) -> dict:
    """The settings chosen on the task folder's SOURCE validation split (source_validation.py)."""
    from ..engine import Engine
    from ..source_validation import SourceValidation, choose_steps, hint_bands

    engine = Engine(bundle_path, device="cpu", threads=threads, mode="source", postprocess=False)
    cases = SourceValidation(task_dir).segment(engine, log)
    where = {"split": "source val", "cases": len(cases), "data": str(task_dir), "command": command}
    settings = {}
    if choose_postprocess:
        labels = [v for v in engine.bundle.labels.values() if v != 0]
        steps, record = choose_steps(cases, labels)
        settings["postprocess"] = steps
        settings["postprocess_choice"] = {**where, **record}
        log(f"post-processing: {steps or 'none'} (source val Dice raw {record['raw_dice']}, "
            f"delivered {record['delivered_dice']})")
    if calibrate_hints:
        settings["uncertainty_hints"] = {**where, **hint_bands(cases)}
    return settings


def run_settings(args) -> int:
    from ..bundle import update_bundle

    chosen = args.choose_postprocess or args.calibrate_hints
    if bool(args.json) == bool(chosen):
        raise InputError("Give either --json or --choose-postprocess / --calibrate-hints (with --task-dir).")
    if chosen and not args.task_dir:
        raise InputError("--choose-postprocess and --calibrate-hints need --task-dir: a task folder with a "
                         "labelled source validation split.")
    settings = _json_settings(args.json) if args.json else source_settings(
        args.bundle, args.task_dir, args.choose_postprocess, args.calibrate_hints, args.threads, _command(args))
    bundle = update_bundle(args.bundle, metadata=settings)
    print(f"settings written to {bundle.path}: {', '.join(sorted(settings))}")
    return 0


def _common(p):
    p.add_argument("--task-dir", help="task directory made by `crossdomainseg data make`")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--checkpoint-dir", help="default: BUNDLE.ckpt beside the bundle")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--rotated-copies", type=int, default=0,
                   help="augment: this many randomly rotated copies of each source image")
    p.add_argument("--max-degrees", type=float, default=15.0, help="rotation range of those copies")


def add_parser(subparsers) -> None:
    from .train_all import STAGES

    train = subparsers.add_parser("train", help="train a model bundle (everything at once, source segmenter, translator)")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)

    src = stages.add_parser("source", help="train the reference segmenter on labelled source images")
    _common(src)
    src.add_argument("--images", help="folder of labelled source images")
    src.add_argument("--labels", help="folder of label maps, same file names as the images")
    src.add_argument("--val-images", help="optional validation images (picks the best epoch)")
    src.add_argument("--val-labels")
    src.add_argument("--out", required=True, help="bundle folder to write")
    src.add_argument("--task", help="task name recorded in the bundle")
    src.add_argument("--label-names", help="e.g. liver=1,spleen=2 (default: from the label maps)")
    src.add_argument("--source-modality", help="e.g. CT (default from task.json)")
    src.add_argument("--target-modality", help="e.g. MR (default from task.json)")
    src.add_argument("--source-norm", help="window:LOW:HIGH | percentile:LO:HI | minmax")
    src.add_argument("--target-norm", help="window:LOW:HIGH | percentile:LO:HI | minmax")
    src.add_argument("--dims", type=int, choices=(2, 3), help="default: from the images")
    src.add_argument("--spacing", type=float, nargs="+", help="working grid mm (default: median)")
    src.add_argument("--roi", default="64", help="patch size, one or per-axis comma list")
    src.add_argument("--channels", default="8,16,32,64", help="UNet channels per level")
    src.add_argument("--res-units", type=int, default=1)
    src.add_argument("--batch", type=int, default=2)
    src.add_argument("--lr", type=float, default=1e-3)
    src.add_argument("--intensity-remap", type=float, default=0.0,
                     help="share of crops given a random intensity transfer function (0-1)")
    src.add_argument("--class-balanced", action="store_true",
                     help="centre foreground crops on each label equally often (small structures)")
    src.add_argument("--label-contrast", type=float, default=0.0,
                     help="remapped crops also shift each labelled structure's brightness by up to "
                          "this much either way (0 = off)")
    src.add_argument("--domain-randomize", type=float, default=0.0, metavar="P",
                     help="share of crops synthesised from their labels with random contrast per "
                          "label and tissue class, texture, bias, noise and resolution (SynthSeg-"
                          "style; 1 = synthetic images only; 0 = off)")
    src.add_argument("--init-from", metavar="BUNDLE",
                     help="start from this bundle's segmenter (same network) instead of random "
                          "weights, e.g. to fine-tune a reference with --domain-randomize")
    src.add_argument("--version", default="0.1.0", help="model version recorded in the bundle")
    src.set_defaults(func=run_source)

    tr = stages.add_parser("translator", help="train the TD-GAN translator into an existing bundle")
    _common(tr)
    tr.add_argument("--bundle", required=True, help="bundle with a trained segmenter")
    tr.add_argument("--source-images")
    tr.add_argument("--source-labels")
    tr.add_argument("--target-images", help="unlabelled target-modality images")
    tr.add_argument("--val-target-images", help="optional labelled target images, only logged")
    tr.add_argument("--val-target-labels")
    tr.add_argument("--val-cases", type=int, default=3, help="labelled target cases logged per epoch")
    tr.add_argument("--patch", default="48", help="training crop, divisible by 2**n_down")
    tr.add_argument("--gen-channels", type=int, default=16)
    tr.add_argument("--n-down", type=int, default=2)
    tr.add_argument("--blocks", type=int, default=3)
    tr.add_argument("--stem-kernel", type=int, default=7, help="generator's first/last conv width")
    tr.add_argument("--residual", action="store_true",
                    help="generators predict a change to their input (start as the identity)")
    tr.add_argument("--norm", choices=("instance", "none"), default="instance",
                    help="normalisation layers of generators and discriminators")
    tr.add_argument("--disc-channels", type=int, default=16)
    tr.add_argument("--disc-layers", type=int, default=3)
    tr.add_argument("--batch", type=int, default=1)
    tr.add_argument("--lr", type=float, default=2e-4)
    tr.add_argument("--lambda-cycle", type=float, default=10.0)
    tr.add_argument("--lambda-identity", type=float, default=5.0)
    tr.add_argument("--lambda-seg", type=float, default=1.0)
    tr.add_argument("--lambda-semantic", type=float, default=0.0,
                    help="weight of S(G(target)) = S(target) consistency on real target images")
    tr.add_argument("--lambda-class-intensity", type=float, default=0.0,
                    help="weight of matching organ mean intensities of G(target) to the source's")
    tr.add_argument("--average-decay", type=float, default=0.0,
                    help="ship an exponential moving average of the generator (e.g. 0.99; 0 = off)")
    tr.add_argument("--version", help="model version recorded in the bundle (default: keep the bundle's)")
    tr.add_argument("--seg-detached", action="store_true",
                    help="segmentation consistency trains G_t->s only, on a detached G_s->t(source)")
    tr.add_argument("--seg-noise", type=float, default=0.0,
                    help="std of Gaussian noise added to that detached image (with --seg-detached)")
    tr.set_defaults(func=run_translator)

    everything = stages.add_parser(
        "all", help="plan from the data and train every stage into one bundle within a time budget",
        description="Chooses the working grid's spacing, the patch size and each domain's "
        "normalisation from the images (median spacing and size; CT-like data with air in "
        "Hounsfield units get a window round their tissue, other data per-image percentiles), then "
        "trains, in order: source (the reference segmenter; best epoch on a held-out share of the "
        "source images), randomize (that segmenter fine-tuned on source crops synthesised with "
        "random contrast per label, so that it reads raw target images), translator (TD-GAN, for "
        "the synthetic preview) and curriculum (the reference's student trained on the unlabelled "
        "target images; it becomes the bundle's segmenter and reads the raw target image). A short probe "
        "of real training steps first picks the grid the budget affords (coarser, down to what the source "
        "labels survive, when the segmenter stages would get fewer than 4000 steps) and the segmenter "
        "stages' epoch length (validation at most 10% of a stage). Each "
        "stage gets as many epochs as fit in its share of --budget-minutes (its first epoch is "
        "timed); after each, --out holds a bundle the engine loads. One log line per epoch; "
        "--resume continues after a kill, or after a run stopped with --stages, at the first "
        "unfinished stage. No target label is read. The plan is stored in the bundle's metadata "
        "(plan).")
    everything.add_argument("--source-images", help="folder of labelled source images")
    everything.add_argument("--source-labels", help="folder of their label maps, same file names")
    everything.add_argument("--target-images", help="folder of unlabelled target-modality images")
    everything.add_argument("--task-dir", help="instead of the folders: a task made by `crossdomainseg data make`")
    everything.add_argument("--out", required=True, help="bundle folder to write (must not hold a bundle unless --resume)")
    everything.add_argument("--budget-minutes", type=float, default=90.0, help="wall-clock time for all stages")
    everything.add_argument("--steps", type=int, default=None,
                            help="optimiser steps per epoch of every stage (default: the source and randomize "
                            "stages get enough that validating after each epoch takes at most 10%% of the "
                            "stage, from a timing probe; the translator and curriculum 25)")
    everything.add_argument("--val-share", type=float, default=0.2,
                            help="share of the source images held out to pick the segmenter's epoch")
    everything.add_argument("--label-names", help="e.g. liver=1,spleen=2 (default: label_N for each value found)")
    everything.add_argument("--task", help="task name recorded in the bundle (default: the task's, or custom)")
    everything.add_argument("--source-modality", help="e.g. CT, recorded in the bundle")
    everything.add_argument("--target-modality", help="e.g. MR, recorded in the bundle")
    everything.add_argument("--domain-randomize", type=float, default=0.0, metavar="P",
                            help="share of the SOURCE stage's crops synthesised from their labels "
                            "(0 = off: the randomize stage does that)")
    everything.add_argument("--randomize", type=float, default=0.8, metavar="P",
                            help="share of the randomize stage's crops synthesised from their labels "
                            "(0 = leave the stage out; the curriculum then reads the translator's preview)")
    everything.add_argument("--stages", nargs="+", choices=STAGES, metavar="STAGE",
                            help=f"the stages to train now, of {', '.join(STAGES)}; each needs the ones "
                            "before it finished or listed (stop after any stage, continue with --resume) "
                            "(default: every stage --randomize leaves in)")
    everything.add_argument("--version", default="0.1.0", help="model version recorded in the bundle")
    everything.add_argument("--seed", type=int, default=0)
    everything.add_argument("--resume", action="store_true", help="continue an interrupted run of the same command")
    everything.add_argument("--checkpoint-dir", help="default: BUNDLE.ckpt beside the bundle")
    everything.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    everything.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    everything.add_argument("--no-progress", action="store_true", help="no per-epoch log lines")
    everything.set_defaults(func=run_all)

    st = stages.add_parser("settings", help="write settings into a bundle's metadata, by hand or chosen on "
                           "the source validation split")
    st.add_argument("--bundle", required=True)
    st.add_argument("--json", help=f"an object with some of the keys {', '.join(SETTINGS)}")
    st.add_argument("--task-dir", help="task folder whose SOURCE validation split the choices are made on "
                    "(its target labels are never read)")
    st.add_argument("--choose-postprocess", action="store_true",
                    help="choose the post-processing steps (postprocess) that raise source validation Dice")
    st.add_argument("--calibrate-hints", action="store_true",
                    help="store the uncertainty hint bands (U percentiles of the source validation images)")
    st.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    st.set_defaults(func=run_settings)
