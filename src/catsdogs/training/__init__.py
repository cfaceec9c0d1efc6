"""One way through a training stage: data, model, fit with tracking, save and record, outputs."""
