//! Where the strong model runs: the CPU (the default; sw2s's own packed kernels for BERT,
//! MPNet and small decoders) or an NVIDIA GPU through candle's CUDA backend, which a build
//! gets with `--features cuda` (it needs the CUDA toolkit to compile, `scripts/check_cuda.sh`).
//!
//! On a GPU every family runs on candle's tensor code: the BERT family padded per batch,
//! candle-transformers' encoders as on the CPU, decoder LMs on candle-transformers' quantized
//! models (last-token pooling). Training stays on the CPU: linear heads are small, and `full`
//! jobs use backward passes written for the CPU (`train_ops`).

use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use candle_core::Device;

/// A parsed `--device`: `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDevice {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for ComputeDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("{s:?} is not a device: use cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl ComputeDevice {
    /// Whether this build can run on a GPU at all.
    pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

    /// Opens the device, with a message that says what to do when it cannot be.
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) if !Self::CUDA_BUILT => anyhow::bail!(
                "--device {self}: this sw2s was built without GPU support; build it with \
                 `cargo build --release --features cuda` (needs the CUDA toolkit, see \
                 scripts/check_cuda.sh) or run with --device cpu"
            ),
            Self::Cuda(n) => {
                Device::new_cuda(n).with_context(|| format!("opening GPU {n} (--device {self})"))
            }
        }
    }
}

/// The name `/info` reports for a candle device.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        for (text, want) in [
            ("cpu", ComputeDevice::Cpu),
            ("CPU", ComputeDevice::Cpu),
            ("cuda", ComputeDevice::Cuda(0)),
            ("gpu", ComputeDevice::Cuda(0)),
            ("cuda:3", ComputeDevice::Cuda(3)),
        ] {
            assert_eq!(text.parse::<ComputeDevice>(), Ok(want), "{text}");
        }
        assert_eq!(ComputeDevice::Cuda(1).to_string(), "cuda:1");
        assert_eq!(
            ComputeDevice::Cpu.to_string().parse::<ComputeDevice>(),
            Ok(ComputeDevice::Cpu)
        );
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1"] {
            let err = bad.parse::<ComputeDevice>().unwrap_err();
            assert!(err.contains("cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_cpu_always_opens_and_a_gpu_needs_the_feature() {
        assert!(ComputeDevice::Cpu.open().unwrap().is_cpu());
        if !ComputeDevice::CUDA_BUILT {
            let err = format!("{:#}", ComputeDevice::Cuda(0).open().unwrap_err());
            assert!(err.contains("--features cuda"), "{err}");
        }
        assert_eq!(name(&Device::Cpu), "cpu");
    }
}
