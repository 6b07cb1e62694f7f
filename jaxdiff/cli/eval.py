"""`jaxdiff eval`: quality metrics of an npz of samples (or of fresh samples from a workdir).

Metrics: `fdd`, `accuracy` (the offline digits metrics), `fid`, `kid`, `precision`, `recall`
(Inception-v3 pool features). `--json` prints one object keyed by metric name; logs go to stderr.
"""

from __future__ import annotations

import json
import os
import sys

from jaxdiff.errors import JaxdiffError

DIGITS_METRICS = ("fdd", "accuracy")
INCEPTION_METRICS = ("fid", "kid", "precision", "recall")
METRICS = DIGITS_METRICS + INCEPTION_METRICS


def add_arguments(parser):
  parser.add_argument("--samples", metavar="FILE.npz",
                      help="samples to evaluate (`images` uint8 [N,H,W,C], `labels` int32 [N]); "
                           "with --workdir, where the fresh samples are written")
  parser.add_argument("--metric", required=True, metavar="NAME[,NAME]",
                      help="comma-separated: " + ", ".join(METRICS))
  parser.add_argument("--ref", metavar="STATS.npz",
                      help="reference for fid/kid/precision/recall: stats (`mu`, `sigma`, and "
                           "`features` for kid/precision/recall) or a sample-format npz of real "
                           "images (`images`)")
  parser.add_argument("--inception", metavar="WEIGHTS",
                      help="Inception weights (.npz converted from pt_inception-2015-12-05-"
                           "6726825d.pth); default $JAXDIFF_INCEPTION or the cache dir")
  parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
  parser.add_argument("--workdir", metavar="DIR", help="sample from this workdir first (EMA weights)")
  parser.add_argument("--num", type=int, metavar="N", help="number of samples to draw with --workdir")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed with --workdir (default 0)")
  parser.add_argument("--batch", type=int, default=64, help="Inception feature batch (default 64)")
  parser.add_argument("--save-ref", metavar="OUT.npz",
                      help="also write the samples' Inception stats (mu, sigma, features) here, "
                           "for use as --ref")
  parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
  parser.add_argument("--kid-subset-size", type=int, default=1000,
                      help="KID subset size (default 1000)")
  parser.add_argument("--pr-k", type=int, default=3,
                      help="k of the k-NN manifolds for precision/recall (default 3)")


def parse_metrics(text: str) -> list[str]:
  names = [m.strip().lower() for m in text.split(",") if m.strip()]
  bad = [m for m in names if m not in METRICS]
  if not names or bad:
    raise JaxdiffError(f"unknown metric(s) {bad or [text]}: choose from {', '.join(METRICS)}")
  return list(dict.fromkeys(names))


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def _sample_from_workdir(args):
  import numpy as np
  import jaxdiff
  if args.num is None or args.num < 1:
    raise JaxdiffError("--workdir needs --num N (N >= 1): how many samples to draw")
  try:
    model = jaxdiff.load(args.workdir)
  except ImportError as e:
    raise JaxdiffError(f"sampling from a workdir is not available in this build ({e})") from e
  _log(f"sampling {args.num} images from {args.workdir} (seed {args.seed}) ...")
  if hasattr(model, "sample_with_labels"):
    images, labels = model.sample_with_labels(args.num, seed=args.seed, progress=True)
  else:
    images = model.sample(args.num, seed=args.seed)
    label_dim = getattr(model, "label_dim", 0) or 0
    labels = (np.arange(args.num) % label_dim).astype(np.int32) if label_dim else None
  images = np.asarray(images)
  if args.samples:
    from jaxdiff.fileio import atomic_savez
    arrays = {"images": images} if labels is None else {"images": images,
                                                         "labels": np.asarray(labels, np.int32)}
    atomic_savez(args.samples, **arrays)
    _log(f"wrote {args.samples}")
  return images, (None if labels is None else np.asarray(labels, np.int32))


def _load_reference(path: str, need_features: bool, features_of):
  """Reference stats {'mu', 'sigma'[, 'features']} from a stats file or an npz of real images."""
  import numpy as np
  from jaxdiff.eval import stats as stats_lib
  from jaxdiff.eval.metrics import feature_stats
  try:
    with np.load(path) as z:
      has_images = "images" in z.files
  except Exception:  # missing or unreadable: load_stats below says which, in one line
    has_images = False
  if has_images:
    images, _ = stats_lib.load_samples(path, what="reference images")
    _log(f"reference: {images.shape[0]} images from {path}")
    feats = features_of(images)
    mu, sigma = feature_stats(feats)
    return {"mu": mu, "sigma": sigma, "features": feats}
  ref = stats_lib.load_stats(path)
  if need_features and "features" not in ref:
    raise JaxdiffError(f"kid/precision/recall need reference features, but {path!r} holds only "
                       "mu/sigma: pass an npz of real images, or stats written with --save-ref")
  return ref


def evaluate(images, labels, metrics, *, ref=None, inception=None, batch=64, save_ref=None,
             kid_subsets=100, kid_subset_size=1000, pr_k=3) -> dict:
  """Metric name → value for uint8 images [N, H, W, C] (labels int32 [N] or None)."""
  results = {}
  if "accuracy" in metrics and labels is None:
    raise JaxdiffError("accuracy needs class labels: the samples file has no 'labels' (sample a "
                       "class-conditional model)")
  inception_wanted = [m for m in metrics if m in INCEPTION_METRICS]
  if inception_wanted and not ref:
    raise JaxdiffError(f"{', '.join(inception_wanted)} need --ref STATS.npz (reference statistics "
                       "of the real data, or an npz of real images)")
  if any(m in DIGITS_METRICS for m in metrics):
    from jaxdiff.eval import digits_metric as dm
    dm.check_digits_images(images)
    classifier = dm.load_classifier()
    if "fdd" in metrics:
      results["fdd"] = dm.fdd(images, classifier)
      _log(f"fdd over {images.shape[0]} samples vs {dm.real_digits()[0].shape[0]} real digits; "
           f"real-vs-real floor (two halves): {dm.fdd_floor(classifier):.4f}")
    if "accuracy" in metrics:
      results["accuracy"] = dm.accuracy(images, labels, classifier)
  if inception_wanted or save_ref:
    import numpy as np
    from jaxdiff.eval import inception as inc
    from jaxdiff.eval import metrics as M
    from jaxdiff.eval import stats as stats_lib
    from jaxdiff.eval.features import inception_features
    net = inc.load_inception(inception)

    def features_of(imgs):
      return inception_features(imgs, model=net, batch_size=batch)

    if inception_wanted:  # read the reference before the long extraction: fail early
      ref_stats = _load_reference(ref, any(m in metrics for m in ("kid", "precision", "recall")),
                                  features_of)
    feats = features_of(images)
    mu, sigma = M.feature_stats(feats)
    if save_ref:
      stats_lib.save_stats(save_ref, mu, sigma, feats)
      _log(f"wrote reference stats of {feats.shape[0]} images to {save_ref}")
    if inception_wanted:
      if ref_stats["mu"].shape != mu.shape:
        raise JaxdiffError(f"reference {ref!r} has {ref_stats['mu'].shape[0]}-d stats, the "
                           f"features are {mu.shape[0]}-d: use Inception pool3 (2048-d) stats")
      if "fid" in metrics:
        results["fid"] = M.frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"])
      if "kid" in metrics:
        results["kid"], kid_std = M.kid(ref_stats["features"], feats, num_subsets=kid_subsets,
                                        max_subset_size=kid_subset_size)
        _log(f"kid std over {kid_subsets} subsets: {kid_std:.6f}")
      if "precision" in metrics or "recall" in metrics:
        p, r = M.precision_recall(np.asarray(ref_stats["features"]), feats, k=pr_k)
        if "precision" in metrics:
          results["precision"] = p
        if "recall" in metrics:
          results["recall"] = r
  return {m: float(results[m]) for m in metrics}


def run(args, extra) -> int:
  metrics = parse_metrics(args.metric)
  if args.batch < 1:
    raise JaxdiffError(f"--batch must be at least 1 (got {args.batch})")
  if any(m in INCEPTION_METRICS for m in metrics) or args.save_ref:
    from jaxdiff.eval import inception as inc
    path = args.inception or inc.default_weights_path()
    if not os.path.isfile(path):  # before sampling: do not make the user wait to learn this
      raise JaxdiffError(inc.missing_weights_message(path))
  if args.workdir:
    images, labels = _sample_from_workdir(args)
  elif args.samples:
    from jaxdiff.eval.stats import load_samples
    images, labels = load_samples(args.samples)
  else:
    raise JaxdiffError("nothing to evaluate: pass --samples FILE.npz, or --workdir DIR --num N")
  _log(f"evaluating {', '.join(metrics)} on {images.shape[0]} images {images.shape[1:]}")
  results = evaluate(images, labels, metrics, ref=args.ref, inception=args.inception,
                     batch=args.batch, save_ref=args.save_ref, kid_subsets=args.kid_subsets,
                     kid_subset_size=args.kid_subset_size, pr_k=args.pr_k)
  if args.json:
    print(json.dumps(results))
  else:
    for name, value in results.items():
      print(f"{name}: {value:.6g}")
  return 0
