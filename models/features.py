"""Names shared by the data, the Transform graph, the model and its signatures.

One source of truth: every other module imports these instead of spelling the strings.
"""

# Raw tf.Example features (what ExampleGen writes and what the serving signature reads).
IMAGE_KEY = "image"  # PNG-encoded uint8 bytes, H x W x C.
LABEL_KEY = "label"  # int64 class id; optional, never needed for training.

# Transformed feature (what the Trainer reads): float32 [H, W, C] in [0, 1].
TRANSFORMED_IMAGE_KEY = "image"

# Serving signatures and their tensors.
SERVING_SIGNATURE = "serving_default"
DECODE_SIGNATURE = "decode"
ENCODE_SIGNATURE = "encode"
GENERATE_SIGNATURE = "generate"
SCORE_SIGNATURE = "score"
# What the Evaluator calls: the losses plus likelihood bounds that cost K decoder passes per image.
EVALUATION_SIGNATURE = "evaluate"
EXAMPLES_INPUT = "examples"
LATENT_INPUT = "z"
COUNT_INPUT = "count"  # generate: how many images
SEED_INPUT = "seed"  # generate: the same seed gives the same images
RECONSTRUCTION = "reconstruction"
Z_MEAN = "z_mean"
Z_LOG_VAR = "z_log_var"
RECONSTRUCTION_LOSS = "reconstruction_loss"
KL_LOSS = "kl_loss"
LOSS = "loss"
IMAGES = "images"
SCORE = "score"  # the anomaly score (models/anomaly.py; higher is more unusual)
PERCENTILE = "percentile"  # score: the share of eval images scoring lower
IS_ANOMALY = "is_anomaly"  # score: above the eval split's --anomaly-quantile
COMPLEXITY_BITS = "complexity_bits"  # score: the image's length as PNG, in bits
LATENT_DISTANCE = "latent_distance"  # score: squared Mahalanobis distance from training codes
NEG_ELBO = "neg_elbo"  # Monte-Carlo negative ELBO (models/bounds.py)
NLL_IW = "nll_iw"  # importance-weighted bound on -log p(x) (models/bounds.py)

# The per-image losses the Evaluator averages over the eval split (nats per image).
LOSS_OUTPUTS = (RECONSTRUCTION_LOSS, KL_LOSS, LOSS, NEG_ELBO, NLL_IW)

# The Trainer's per-epoch history (losses, epoch seconds), in its model_run folder.
HISTORY_FILE = "history.json"
