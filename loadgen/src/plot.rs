//! The throughput-over-time plot of a run: an SVG, so that dips (a stall, a failover, a
//! compaction) are visible at a glance instead of hidden in a mean.

use crate::drive::TIMELINE_BUCKET;
use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

/// Writes a run's throughput over time (its [`crate::drive::Report::timeline`]) to `path`
/// as an SVG: every bucket of [`TIMELINE_BUCKET`] (thin) and every whole second (thick),
/// in transactions per second.
pub fn throughput_svg(timeline: &[u32], title: &str, path: &Path) -> Result<()> {
    let per_second_factor = 1_000.0 / TIMELINE_BUCKET.as_millis() as f64;
    let bucket_s = TIMELINE_BUCKET.as_secs_f64();
    let buckets: Vec<(f64, f64)> = timeline
        .iter()
        .enumerate()
        .map(|(i, n)| (i as f64 * bucket_s, f64::from(*n) * per_second_factor))
        .collect();
    let per_bucket_second = (1.0 / bucket_s).round().max(1.0) as usize;
    let seconds: Vec<(f64, f64)> = timeline
        .chunks(per_bucket_second)
        .enumerate()
        .filter(|(_, chunk)| chunk.len() == per_bucket_second)
        .map(|(s, chunk)| {
            let answered: u64 = chunk.iter().map(|n| u64::from(*n)).sum();
            (s as f64 + 0.5, answered as f64)
        })
        .collect();
    let x_max = (buckets.len() as f64 * bucket_s).max(1.0);
    let y_max = buckets
        .iter()
        .chain(&seconds)
        .map(|(_, y)| *y)
        .fold(1.0, f64::max)
        * 1.1;

    let root = SVGBackend::new(path, (1000, 400)).into_drawing_area();
    let draw = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start of the run")
        .y_desc("transactions per second")
        .draw()
        .map_err(draw)?;
    let bucket_ms = TIMELINE_BUCKET.as_millis();
    chart
        .draw_series(LineSeries::new(buckets, BLUE.mix(0.35)))
        .map_err(draw)?
        .label(format!("per {bucket_ms} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.mix(0.35)));
    chart
        .draw_series(LineSeries::new(seconds, BLACK.stroke_width(2)))
        .map_err(draw)?
        .label("per second")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dip_shows_in_the_plot() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("run.svg");
        let mut timeline = vec![50u32; 30];
        timeline[12..17].fill(0);
        throughput_svg(&timeline, "kv, 16 clients", &path).expect("plotted");
        let svg = std::fs::read_to_string(&path).expect("written");
        assert!(
            svg.starts_with("<svg") && svg.contains("kv, 16 clients"),
            "{svg}"
        );
        assert!(
            svg.contains("per second") && svg.contains("<polyline"),
            "{svg}"
        );
        assert!(throughput_svg(&timeline, "x", &dir.path().join("no/such/dir.svg")).is_err());
    }
}
