//! One loaded model version: an ONNX graph optimised by tract, its inputs and outputs, and running it on float
//! tensors.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

/// What a model version cannot do or be.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot load {path}: {message}")]
    Load { path: String, message: String },
    #[error("{0}")]
    BadInput(String),
    #[error("running the model: {0}")]
    Run(String),
}

/// A tensor's name, element type and shape (-1 for a dimension of any size, such as the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// TensorFlow's name for the element type: `DT_FLOAT`, …
    pub dtype: &'static str,
    pub dims: Vec<i64>,
}

/// A float tensor: its shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// A model version ready to run.
pub struct Loaded {
    plan: Arc<TypedRunnableModel>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

fn dtype_name(d: DatumType) -> &'static str {
    match d {
        DatumType::F32 => "DT_FLOAT",
        DatumType::F64 => "DT_DOUBLE",
        DatumType::I32 => "DT_INT32",
        DatumType::I64 => "DT_INT64",
        DatumType::U8 => "DT_UINT8",
        DatumType::Bool => "DT_BOOL",
        _ => "DT_INVALID",
    }
}

fn info(model: &TypedModel, outlet: OutletId) -> TractResult<TensorInfo> {
    let fact = model.outlet_fact(outlet)?;
    let name = model.outlet_label(outlet).map(str::to_string).unwrap_or_else(|| model.node(outlet.node).name.clone());
    Ok(TensorInfo {
        name,
        dtype: dtype_name(fact.datum_type),
        dims: fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect(),
    })
}

/// Reads an ONNX file. An input dimension with neither a size nor a name (`[None, 1]` as some exporters write the
/// batch) gets a name of its own, as a named one (`[N, 1]`) has: tract would otherwise leave it unknown and refuse to
/// optimise the graph.
fn read_model(path: &Path) -> TractResult<InferenceModel> {
    use tract_onnx::pb::{tensor_shape_proto::dimension::Value as Dim, type_proto};
    let onnx = tract_onnx::onnx();
    let mut proto = onnx.proto_model_for_path(path)?;
    if let Some(graph) = proto.graph.as_mut() {
        for (i, input) in graph.input.iter_mut().enumerate() {
            let Some(type_proto::Value::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
                continue;
            };
            for (j, d) in t.shape.iter_mut().flat_map(|s| s.dim.iter_mut()).enumerate() {
                let unnamed = match &d.value {
                    None => true,
                    Some(Dim::DimParam(p)) => p.is_empty(),
                    Some(Dim::DimValue(v)) => *v < 0,
                };
                if unnamed {
                    d.value = Some(Dim::DimParam(format!("capstan_in{i}_dim{j}")));
                }
            }
        }
    }
    let parsed = onnx.parse(&proto, path.parent().and_then(Path::to_str))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(TractError::msg(format!("could not resolve inputs at top level: {:?}", parsed.unresolved_inputs)));
    }
    Ok(parsed.model)
}

impl Loaded {
    /// Loads and optimises `model.onnx`; only float inputs are served.
    pub fn load(path: &Path) -> Result<Loaded, ModelError> {
        let err = |e: TractError| ModelError::Load { path: path.display().to_string(), message: format!("{e:#}") };
        let model = read_model(path).map_err(err)?.into_optimized().map_err(err)?;
        let inputs: Vec<TensorInfo> = model
            .input_outlets()
            .map_err(err)?
            .iter()
            .map(|o| info(&model, *o))
            .collect::<TractResult<_>>()
            .map_err(err)?;
        let outputs: Vec<TensorInfo> = model
            .output_outlets()
            .map_err(err)?
            .iter()
            .map(|o| info(&model, *o))
            .collect::<TractResult<_>>()
            .map_err(err)?;
        if let Some(i) = inputs.iter().find(|i| i.dtype != "DT_FLOAT") {
            return Err(ModelError::Load {
                path: path.display().to_string(),
                message: format!("input {} is {}; only DT_FLOAT inputs are served", i.name, i.dtype),
            });
        }
        let plan = model.into_runnable().map_err(err)?;
        Ok(Loaded { plan, inputs, outputs })
    }

    /// Runs the model on one tensor per input, in the model's input order; returns one tensor per output.
    pub fn run(&self, inputs: Vec<Dense>) -> Result<Vec<Dense>, ModelError> {
        if inputs.len() != self.inputs.len() {
            return Err(ModelError::BadInput(format!(
                "the model takes {} inputs ({}), got {}",
                self.inputs.len(),
                self.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
                inputs.len()
            )));
        }
        let mut values: TVec<TValue> = tvec![];
        for (d, info) in inputs.into_iter().zip(&self.inputs) {
            let fits = d.shape.len() == info.dims.len()
                && d.shape.iter().zip(&info.dims).all(|(got, want)| *want < 0 || *got as i64 == *want);
            if !fits {
                return Err(ModelError::BadInput(format!(
                    "input {} must have shape {:?} (-1: any size), got {:?}",
                    info.name, info.dims, d.shape
                )));
            }
            let t = Tensor::from_shape(&d.shape, &d.values).map_err(|e| ModelError::BadInput(format!("{e}")))?;
            values.push(t.into());
        }
        let out = self.plan.run(values).map_err(|e| ModelError::Run(format!("{e:#}")))?;
        out.iter()
            .map(|t| {
                let t = t.cast_to::<f32>().map_err(|e| ModelError::Run(format!("{e}")))?;
                let view = t.to_plain_array_view::<f32>().map_err(|e| ModelError::Run(format!("{e}")))?;
                Ok(Dense { shape: view.shape().to_vec(), values: view.iter().copied().collect() })
            })
            .collect()
    }
}
