//! Writes one slice of a dataset and its mask side by side as a PNG, to eyeball orientation
//! and labels:
//!
//! `cargo run -p dka-data --example show_slice -- mni152 .assets/mni152 94 /tmp/slice.png`

use std::path::Path;

use dka_data::{open_dataset, LoaderOptions};
use image::{Rgb, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, name, root, index, out] = &args[..] else {
        return Err(
            "usage: show_slice <dataset> <root> <record index or id suffix> <out.png>".into(),
        );
    };
    let ds = open_dataset(name, Path::new(root), &LoaderOptions::default())?;
    let i = match index.parse::<usize>() {
        Ok(i) if i < ds.records().len() => i,
        _ => ds
            .records()
            .iter()
            .position(|r| r.id.ends_with(index.as_str()))
            .ok_or("no such record")?,
    };
    let raw = ds.read(i)?;
    let (w, h) = raw.image.dimensions();
    let palette = [
        [0, 0, 0],
        [230, 60, 60],
        [60, 200, 90],
        [70, 110, 240],
        [240, 200, 40],
    ];
    let mut img = RgbImage::new(w * 2, h);
    for (x, y, p) in raw.image.enumerate_pixels() {
        img.put_pixel(x, y, *p);
        let m = raw
            .mask
            .as_ref()
            .map_or(0, |m| m.get_pixel(x, y).0[0] as usize);
        img.put_pixel(w + x, y, Rgb(palette[m % palette.len()]));
    }
    img.save(out)?;
    println!("{} -> {out}", ds.records()[i].id);
    Ok(())
}
