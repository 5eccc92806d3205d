"""`vae-pipeline`, the project's command line (setup.py's entry point: main.main).

    main.py            the parser, `run` and `runs`, and how failures are shown
    cluster.py         `compile`, `submit` and `schedule`: Kubeflow Pipelines and Vertex AI
    model_commands.py  generate, reconstruct, encode, score, interpolate, latent-plot
    common.py          what they share: UserError, --verbose

The settings' flags are not written here: each is derived from its PipelineConfig field
(vae_pipeline.config.add_flags).
"""
