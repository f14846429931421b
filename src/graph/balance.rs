//! Reading a refined label out of label spreading's F: remove part of the example's own weak
//! label (`self_weight`), then weigh the classes — by nothing, the weak labels' masses,
//! equal masses, or (the default) so that the refined labels' class shares follow the
//! estimated prior — and normalise.

use super::spreading::normalize;
use super::{ClassBalance, GraphSettings};

/// How much of the direct (1−α)·Y term the readout removes.
pub(super) fn self_discount(settings: GraphSettings) -> f32 {
    (1.0 - settings.self_weight) * (1.0 - settings.alpha)
}

/// Per-class factors of the readout: the class's target over its mass in the readout,
/// Σ_i (F_ic − discount·Y_ic). `Estimated` targets equal masses, then weights the classes
/// (`weights`, from [`share_weights`]) so that the shares of the argmax follow the prior.
pub(super) fn scale_for(
    settings: GraphSettings,
    weights: &[f32],
    mass_f: &[f64],
    mass_y: &[f64],
) -> Vec<f32> {
    let discount = self_discount(settings) as f64;
    mass_f
        .iter()
        .zip(mass_y)
        .enumerate()
        .map(|(c, (&f, &y))| {
            let target = match settings.class_balance {
                ClassBalance::None => None,
                ClassBalance::WeakPrior => Some(y),
                ClassBalance::Uniform => Some(1.0),
                ClassBalance::Estimated => Some(weights.get(c).copied().unwrap_or(1.0) as f64),
            };
            match target {
                Some(q) if f - discount * y > 1e-12 && q > 0.0 => (q / (f - discount * y)) as f32,
                _ => 1.0,
            }
        })
        .collect()
}

/// Class weights for `Estimated` balance: with each class's readout divided by its mass,
/// the weights w make the share of nodes whose argmax of w_c·h_ic is c equal the prior
/// (the weak labels' shares without one). Two classes: the exact quantile of the score
/// ratio; more: damped iterative scaling. Other balances: all ones.
pub(super) fn share_weights(
    settings: GraphSettings,
    prior: Option<&[f64]>,
    f: &[f32],
    y: &[f32],
    mass_f: &[f64],
    mass_y: &[f64],
    classes: usize,
) -> Vec<f32> {
    let ones = vec![1.0f32; classes];
    if settings.class_balance != ClassBalance::Estimated || classes < 2 {
        return ones;
    }
    let target: Vec<f64> = match prior {
        Some(p) if p.len() == classes => p.to_vec(),
        _ => {
            let total: f64 = mass_y.iter().sum();
            if total <= 0.0 {
                return ones;
            }
            mass_y.iter().map(|m| m / total).collect()
        }
    };
    let uniform = GraphSettings {
        class_balance: ClassBalance::Uniform,
        ..settings
    };
    let scale = scale_for(uniform, &ones, mass_f, mass_y);
    let n = f.len() / classes;
    let rows: Vec<Vec<f32>> = (0..n as u32)
        .filter_map(|node| readout(uniform, f, y, node, classes, &scale))
        .collect();
    if rows.is_empty() {
        return ones;
    }
    if classes == 2 {
        // Class 1 wins where w·h1 > h0, i.e. log(h1/h0) > −log w: put the cut at the
        // (1 − π1) quantile of the log ratios.
        let mut ratios: Vec<f64> = rows
            .iter()
            .map(|r| ((r[1] as f64).max(1e-12) / (r[0] as f64).max(1e-12)).ln())
            .collect();
        ratios.sort_by(|a, b| a.total_cmp(b));
        let cut = ((1.0 - target[1]) * ratios.len() as f64).round() as usize;
        let t = match cut {
            0 => ratios[0] - 1e-6,
            c if c >= ratios.len() => ratios[ratios.len() - 1] + 1e-6,
            c => (ratios[c - 1] + ratios[c]) / 2.0,
        };
        return vec![1.0, (-t).exp() as f32];
    }
    let mut w = vec![1.0f64; classes];
    for _ in 0..200 {
        let mut counts = vec![0usize; classes];
        for r in &rows {
            let best = (0..classes)
                .max_by(|&a, &b| (w[a] * r[a] as f64).total_cmp(&(w[b] * r[b] as f64)))
                .unwrap_or(0);
            counts[best] += 1;
        }
        let mut moved = 0.0f64;
        for c in 0..classes {
            let share = (counts[c] as f64 / rows.len() as f64).max(1e-4);
            let step = (target[c].max(1e-4) / share).powf(0.3);
            w[c] *= step;
            moved = moved.max((step - 1.0).abs());
        }
        if moved < 1e-3 {
            break;
        }
    }
    let max = w.iter().cloned().fold(f64::MIN, f64::max);
    w.iter().map(|v| (v / max) as f32).collect()
}

/// One node's refined label: h = F − discount·Y, class-scaled, normalised.
pub(super) fn readout(
    settings: GraphSettings,
    f: &[f32],
    y: &[f32],
    node: u32,
    classes: usize,
    scale: &[f32],
) -> Option<Vec<f32>> {
    let discount = self_discount(settings);
    let range = node as usize * classes..(node as usize + 1) * classes;
    let row: Vec<f32> = f[range.clone()]
        .iter()
        .zip(&y[range])
        .zip(scale)
        .map(|((f, y), s)| (f - discount * y).max(0.0) * s)
        .collect();
    normalize(&row)
}
