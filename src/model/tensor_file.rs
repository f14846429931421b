//! The safetensors file format for small f32 tensors with string metadata (the per-task
//! heads a model version carries). What the tensors mean is the caller's business.

use std::collections::HashMap;

use anyhow::{bail, Context};
use safetensors::tensor::{Dtype, TensorView};

/// A named f32 tensor: (name, shape, values in row-major order).
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// Tensors by name: (shape, values).
pub type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

pub fn write(
    tensors: &[NamedTensor],
    metadata: HashMap<String, String>,
) -> anyhow::Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, shape, data)| {
            (
                name.clone(),
                shape.clone(),
                data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            Ok((
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    Ok(safetensors::serialize(views, &Some(metadata))?)
}

/// The tensors by name, and the metadata.
pub fn read(bytes: &[u8]) -> anyhow::Result<(Tensors, HashMap<String, String>)> {
    let (_, metadata) =
        safetensors::SafeTensors::read_metadata(bytes).context("reading tensors")?;
    let st = safetensors::SafeTensors::deserialize(bytes).context("reading tensors")?;
    let mut out = HashMap::new();
    for name in st.names() {
        let t = st.tensor(name)?;
        if t.dtype() != Dtype::F32 {
            bail!("{name} is {:?}, expected F32", t.dtype());
        }
        let data = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.insert(name.to_string(), (t.shape().to_vec(), data));
    }
    Ok((out, metadata.metadata().clone().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_and_metadata_round_trip() {
        let tensors = vec![(
            "a.weight".to_string(),
            vec![2, 2],
            vec![1.0, -2.0, 0.5, 3.25],
        )];
        let meta = HashMap::from([("kind".to_string(), "test".to_string())]);
        let bytes = write(&tensors, meta.clone()).unwrap();
        let (back, back_meta) = read(&bytes).unwrap();
        assert_eq!(back["a.weight"], (vec![2, 2], vec![1.0, -2.0, 0.5, 3.25]));
        assert_eq!(back_meta, meta);
        assert!(read(b"not safetensors").is_err());
    }
}
