//! Writes a fixture model as version 1 of a model base path, for `capstan serve-model` without TensorFlow.
//!
//! `fixture_model BASE [INPUTS WIDTH LAYERS]` writes `BASE/1/model.onnx`: a dense ReLU network (default 16 inputs,
//! 64 units, 2 hidden layers). Used by the release build's training run (`scripts/pgo_train.py`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a failed step ends the run, saying which

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = PathBuf::from(args.next().ok_or("usage: fixture_model BASE [INPUTS WIDTH LAYERS]")?);
    let mut num = |default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.next().map(|s| s.parse()).transpose()?.unwrap_or(default))
    };
    let (inputs, width, layers) = (num(16)?, num(64)?, num(2)?);
    let dir = base.join("1");
    std::fs::create_dir_all(&dir)?;
    // Renamed into place, as an exporter should, so a watching server never reads half a file.
    std::fs::write(dir.join("model.onnx.tmp"), capstan_serving::fixtures::dense(inputs, width, layers))?;
    std::fs::rename(dir.join("model.onnx.tmp"), dir.join("model.onnx"))?;
    Ok(())
}
