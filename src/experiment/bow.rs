//! A weak model for the experiment: logistic regression on hashed word unigrams and bigrams
//! (L2-normalised counts), trained with Adagrad on sparse features.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::method::heads::softmax;

pub const BUCKETS: usize = 1 << 18;

/// (bucket, value) pairs of one text.
pub type Sparse = Vec<(u32, f32)>;

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub fn features(text: &str) -> Sparse {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let mut counts: std::collections::HashMap<u32, f32> = std::collections::HashMap::new();
    for w in &words {
        *counts
            .entry((fnv1a(w.as_bytes()) % BUCKETS as u64) as u32)
            .or_default() += 1.0;
    }
    for pair in words.windows(2) {
        let key = format!("{} {}", pair[0], pair[1]);
        *counts
            .entry((fnv1a(key.as_bytes()) % BUCKETS as u64) as u32)
            .or_default() += 1.0;
    }
    let norm = counts.values().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
    let mut out: Sparse = counts.into_iter().map(|(k, v)| (k, v / norm)).collect();
    out.sort_unstable_by_key(|x| x.0);
    out
}

pub struct BowModel {
    k: usize,
    weights: Vec<f32>,
    bias: Vec<f32>,
}

impl BowModel {
    /// Multinomial logistic regression, L2-regularised, Adagrad.
    pub fn train(x: &[Sparse], y: &[usize], k: usize, epochs: usize, seed: u64) -> Self {
        let mut m = BowModel {
            k,
            weights: vec![0.0; BUCKETS * k],
            bias: vec![0.0; k],
        };
        let mut g2 = vec![1e-8f32; BUCKETS * k];
        let mut gb2 = vec![1e-8f32; k];
        let (lr, l2) = (0.5f32, 1e-5f32);
        let mut order: Vec<usize> = (0..x.len()).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..epochs {
            order.shuffle(&mut rng);
            for &i in &order {
                let p = m.probs(&x[i]);
                for c in 0..k {
                    let err = p[c] - if y[i] == c { 1.0 } else { 0.0 };
                    for &(f, v) in &x[i] {
                        let j = f as usize * k + c;
                        let g = err * v + l2 * m.weights[j];
                        g2[j] += g * g;
                        m.weights[j] -= lr * g / g2[j].sqrt();
                    }
                    gb2[c] += err * err;
                    m.bias[c] -= lr * err / gb2[c].sqrt();
                }
            }
        }
        m
    }

    pub fn probs(&self, x: &Sparse) -> Vec<f32> {
        let mut logits = self.bias.clone();
        for &(f, v) in x {
            for (c, l) in logits.iter_mut().enumerate() {
                *l += self.weights[f as usize * self.k + c] * v;
            }
        }
        softmax(&logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_keywords_and_generalises_to_new_sentences() {
        let pos = [
            "a great film",
            "truly great acting",
            "great fun",
            "lovely and great",
        ];
        let neg = [
            "an awful film",
            "truly awful acting",
            "awful mess",
            "dull and awful",
        ];
        let x: Vec<Sparse> = pos.iter().chain(&neg).map(|t| features(t)).collect();
        let y: Vec<usize> = (0..8).map(|i| usize::from(i < 4)).collect();
        let m = BowModel::train(&x, &y, 2, 30, 0);
        assert!(m.probs(&features("great story"))[1] > 0.7);
        assert!(m.probs(&features("awful story"))[0] > 0.7);
        let f = features("Great great film");
        assert!((f.iter().map(|(_, v)| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
    }
}
