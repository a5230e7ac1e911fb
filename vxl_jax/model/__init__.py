from vxl_jax.model.videoxl import VideoXLModel, abstract_model, init_model, random_model

__all__ = ["VideoXLModel", "init_model", "abstract_model", "random_model"]
