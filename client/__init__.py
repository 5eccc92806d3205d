"""Using a trained model outside the pipeline: `use` loads a pushed SavedModel and feeds it images
(the model commands of `vae-pipeline`), `pictures` draws what it makes (the run report's figures).

Only the SavedModel's signatures are used, as TensorFlow Serving would serve them: nothing here
imports the model code, the pipeline or TFX.
"""
