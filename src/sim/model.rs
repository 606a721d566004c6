//! Physical QKD link model.
