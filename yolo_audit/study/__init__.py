"""Studies: the study file (spec), training one variant (training), synthetic data (synth), the driver (driver)."""
