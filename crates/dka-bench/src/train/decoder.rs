//! Segmentation heads (Segmenter, Strudel et al. 2021): the `linear` decoder (a per-patch
//! Linear to class scores, bilinearly upsampled) and the `mask-transformer` decoder (patch
//! tokens and one learned embedding per class go through transformer blocks; masks are the
//! scalar products of L2-normalised patch and class features, normalised over classes).
use dka_core::sites::TokenLayout;
use dka_core::vit::{GlobalPool, ImgSize, VitBlock, VitConfig};
use tch::nn::{self, Module};
use tch::Tensor;

/// Segmenter's mask transformer: 2 blocks of width `d_model` (heads d_model / 64, at least 1).
pub struct MaskTransformer {
    proj_dec: nn::Linear,
    cls_emb: Tensor,
    blocks: Vec<VitBlock>,
    norm: nn::LayerNorm,
    proj_patch: Tensor,
    proj_classes: Tensor,
    mask_norm: nn::LayerNorm,
    classes: i64,
}

impl MaskTransformer {
    pub fn new(p: &nn::Path, dim: i64, classes: i64, d_model: i64, layers: i64) -> Self {
        let heads = (d_model / 64).max(1);
        let cfg = VitConfig {
            img_size: ImgSize::Square(16),
            patch_size: 16,
            embed_dim: d_model,
            depth: layers,
            num_heads: heads,
            num_classes: 0,
            global_pool: GlobalPool::None,
            ..VitConfig::default()
        };
        let std = (d_model as f64).powf(-0.5);
        let normal = nn::Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        Self {
            proj_dec: nn::linear(p / "proj_dec", dim, d_model, Default::default()),
            cls_emb: p.var(
                "cls_emb",
                &[1, classes, d_model],
                nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            ),
            blocks: (0..layers)
                .map(|i| VitBlock::new(p / "blocks" / i, &cfg))
                .collect(),
            norm: nn::layer_norm(p / "decoder_norm", vec![d_model], Default::default()),
            proj_patch: p.var("proj_patch", &[d_model, d_model], normal),
            proj_classes: p.var("proj_classes", &[d_model, d_model], normal),
            mask_norm: nn::layer_norm(p / "mask_norm", vec![classes], Default::default()),
            classes,
        }
    }

    /// `map: [B, C, h, w]` -> class scores `[B, classes, h, w]`.
    pub fn forward_t(&self, map: &Tensor, train: bool) -> Tensor {
        let (b, _, h, w) = map.size4().expect("4-D map");
        let x = self.proj_dec.forward(&map.flatten(2, 3).transpose(1, 2));
        let mut x = Tensor::cat(&[x, self.cls_emb.expand([b, -1, -1], false)], 1);
        let layout = TokenLayout {
            prefix: 0,
            h: 1,
            w: h * w + self.classes,
        };
        for blk in &self.blocks {
            x = blk.forward_t(&x, layout, train);
        }
        let x = self.norm.forward(&x);
        let patches = x.narrow(1, 0, h * w).matmul(&self.proj_patch);
        let cls = x.narrow(1, h * w, self.classes).matmul(&self.proj_classes);
        let unit = |t: Tensor| {
            &t / t
                .norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)
                .clamp_min(1e-12)
        };
        let masks = unit(patches).matmul(&unit(cls).transpose(1, 2));
        self.mask_norm
            .forward(&masks)
            .transpose(1, 2)
            .reshape([b, self.classes, h, w])
    }
}
