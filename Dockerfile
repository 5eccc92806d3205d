# The pipeline image: what every step runs in on Kubeflow Pipelines and Vertex AI, and what Beam
# workers run (Dataflow's --sdk_container_image, Flink/Spark's --environment_config).
# TFX's own 1.16.0 image (Python 3.10 and the whole TFX 1.16 stack) with this project installed.
#
#   docker build -t REGISTRY/vae-pipeline:0.1.0 .  &&  docker push REGISTRY/vae-pipeline:0.1.0
#   vae-pipeline compile --image REGISTRY/vae-pipeline:0.1.0 --pipeline-root gs://... --data gs://...
FROM tensorflow/tfx:1.16.0

# Keras 2 (tf_keras) in every process: TensorFlow Transform's layer is a Keras 2 model, and
# TFX's import order would otherwise pick Keras 3 (docs/deployment.md, "The environment").
ENV TF_USE_LEGACY_KERAS=1

WORKDIR /src/vae-pipeline
COPY requirements.lock setup.py README.md ./
COPY pipeline pipeline
COPY models models
COPY components components
COPY data data
COPY client client
COPY cli cli

# The image has TFX's stack already: install the project without re-resolving it, then the few
# packages it lacks at the versions of our lock, and check that the entry points import.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir $(grep -E '^(tf-keras|pillow|matplotlib)==' requirements.lock) \
 && python -c "import vae_pipeline.pipeline, vae_pipeline.models.trainer, vae_pipeline.models.preprocessing"

# Steps start from TFX's entry point (the compiled spec names it); the image's own default stays.
