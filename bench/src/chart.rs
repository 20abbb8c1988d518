//! The SVG chart BENCHMARKS.md embeds: requests per second, grouped by scenario.

use std::path::Path;

use plotters::prelude::*;

use crate::apps::Row;
use crate::load::{Scenario, Totals};

const COLORS: [RGBColor; 6] = [
    RGBColor(120, 120, 120),
    RGBColor(76, 114, 176),
    RGBColor(221, 132, 82),
    RGBColor(85, 168, 104),
    RGBColor(196, 78, 82),
    RGBColor(129, 114, 179),
];

pub fn draw(path: &Path, rows: &[Row], totals: &[Vec<Totals>]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    // The main scenarios (the first of the table); the size sweep is in the
    // table only.
    let groups = Scenario::MAIN.len();
    let width = rows.len() + 1;
    let top = totals[..groups]
        .iter()
        .flatten()
        .map(Totals::rps)
        .fold(0.0, f64::max)
        * 1.4;
    let mut chart = ChartBuilder::on(&root)
        .caption("Requests per second (higher is better)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..(groups * width) as f64, 0.0..top.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // One label per whole number, named only at the middle of each group.
        .x_labels(groups * width + 1)
        .x_label_formatter(&|x| {
            let slot = x.round() as usize;
            let group = slot / width;
            let middle = (*x - x.round()).abs() < 1e-6 && slot % width == width / 2;
            match Scenario::MAIN.get(group) {
                Some(scenario) if middle => scenario.name().to_owned(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|y| format!("{:.0}k", y / 1000.0))
        .y_desc("requests per second")
        .draw()?;
    for (r, row) in rows.iter().enumerate() {
        let color = COLORS[r % COLORS.len()];
        chart
            .draw_series(Scenario::MAIN.iter().enumerate().map(|(s, _)| {
                let x = (s * width + r) as f64 + (width - rows.len()) as f64 / 2.0;
                Rectangle::new([(x, 0.0), (x + 0.9, totals[s][r].rps())], color.filled())
            }))?
            .label(row.name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}
