//! Small ONNX models built in code (no TensorFlow needed): for tests, benchmarks and trying the server out.

use prost::Message;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};

const FLOAT: i32 = 1;

fn value(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    value_with(name, dims, Some("batch"))
}

/// A tensor's declaration; a `None` dimension is named `dynamic`, or left with neither size nor name.
fn value_with(name: &str, dims: &[Option<i64>], dynamic: Option<&str>) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: match d {
                Some(n) => Some(dimension::Value::DimValue(*n)),
                None => dynamic.map(|p| dimension::Value::DimParam(p.into())),
            },
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

fn weights(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: FLOAT,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        ..Default::default()
    }
}

fn model(graph: GraphProto) -> Vec<u8> {
    ModelProto {
        ir_version: 7,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 13 }],
        producer_name: "capstan-serving fixtures".into(),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// `y = x · w + b` for `x` of shape `[batch, w.len()]`: input `x`, output `y` of shape `[batch, 1]`.
pub fn linear(w: &[f32], b: f32) -> Vec<u8> {
    let n = w.len() as i64;
    model(GraphProto {
        name: "linear".into(),
        node: vec![node("MatMul", &["x", "w"], "xw"), node("Add", &["xw", "b"], "y")],
        initializer: vec![weights("w", &[n, 1], w), weights("b", &[1], &[b])],
        input: vec![value("x", &[None, Some(n)])],
        output: vec![value("y", &[None, Some(1)])],
        ..Default::default()
    })
}

/// [`linear`] with an input batch dimension that has neither a size nor a name (`[None, n]`), as some exporters
/// write it.
pub fn linear_unnamed_batch(w: &[f32], b: f32) -> Vec<u8> {
    let n = w.len() as i64;
    model(GraphProto {
        name: "linear".into(),
        node: vec![node("MatMul", &["x", "w"], "xw"), node("Add", &["xw", "b"], "y")],
        initializer: vec![weights("w", &[n, 1], w), weights("b", &[1], &[b])],
        input: vec![value_with("x", &[None, Some(n)], None)],
        output: vec![value_with("y", &[None, Some(1)], None)],
        ..Default::default()
    })
}

/// A dense network of `layers` hidden layers of `width` units with ReLU, deterministic weights: input `x`
/// `[batch, inputs]`, output `y` `[batch, 1]`. For throughput benchmarks.
pub fn dense(inputs: usize, width: usize, layers: usize) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut prev = ("x".to_string(), inputs);
    let w = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| (((i * 7919 + seed * 104729) % 2000) as f32 / 1000.0 - 1.0) * 0.1).collect()
    };
    for l in 0..=layers {
        let out = if l == layers { 1 } else { width };
        let (wn, bn, mm, add, act) =
            (format!("w{l}"), format!("b{l}"), format!("mm{l}"), format!("add{l}"), format!("relu{l}"));
        inits.push(weights(&wn, &[prev.1 as i64, out as i64], &w(prev.1 * out, l)));
        inits.push(weights(&bn, &[out as i64], &w(out, l + 100)));
        nodes.push(node("MatMul", &[&prev.0, &wn], &mm));
        let last = if l == layers { "y".to_string() } else { add.clone() };
        nodes.push(node("Add", &[&mm, &bn], &last));
        if l < layers {
            nodes.push(node("Relu", &[&add], &act));
            prev = (act, out);
        }
    }
    model(GraphProto {
        name: "dense".into(),
        node: nodes,
        initializer: inits,
        input: vec![value("x", &[None, Some(inputs as i64)])],
        output: vec![value("y", &[None, Some(1)])],
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dense, Loaded};

    /// The dense fixture computes what it says: ReLU layers of the documented weights, then one linear output.
    #[test]
    fn dense_matches_a_reference_computation() {
        let (inputs, width, layers) = (4, 8, 2);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, dense(inputs, width, layers)).expect("write");
        let model = Loaded::load(&path).expect("the fixture loads");
        // Inputs of both signs and large enough that the ReLUs cut off part of every hidden layer.
        let x: Vec<f32> = (0..3 * inputs).map(|i| ((i * 37 % 11) as f32 - 5.0) * 2.0).collect();
        let out = model.run(vec![Dense { shape: vec![3, inputs], values: x.clone() }]).expect("runs");
        assert_eq!(out[0].shape, vec![3, 1]);

        let weight = |n: usize, seed: usize| -> Vec<f32> {
            (0..n).map(|i| (((i * 7919 + seed * 104729) % 2000) as f32 / 1000.0 - 1.0) * 0.1).collect()
        };
        for row in 0..3 {
            let mut h: Vec<f32> = x[row * inputs..(row + 1) * inputs].to_vec();
            for l in 0..=layers {
                let out_n = if l == layers { 1 } else { width };
                let (w, b) = (weight(h.len() * out_n, l), weight(out_n, l + 100));
                h = (0..out_n)
                    .map(|j| {
                        let v = b[j] + h.iter().enumerate().map(|(i, hi)| hi * w[i * out_n + j]).sum::<f32>();
                        if l < layers {
                            v.max(0.0)
                        } else {
                            v
                        }
                    })
                    .collect();
            }
            let got = out[0].values[row];
            assert!((got - h[0]).abs() < 1e-6, "row {row}: model {got}, reference {}", h[0]);
        }
    }
}
