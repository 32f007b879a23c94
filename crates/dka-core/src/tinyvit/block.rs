//! A TinyViT block: windowed attention with a learned offset bias (one padded window computed
//! as one key for the padding), the depthwise local conv, the MLP, and their insertion sites.
use super::convs::ConvBn;
use super::TinyVitConfig;
use crate::layers::{layer_norm, linear, Mlp};
use crate::sites::{add_parallel, apply_token, linear_with, BlockSites, QkvLayout, TokenLayout};
use std::cell::RefCell;
use tch::nn::{self, Module};
use tch::Tensor;

/// Window attention with a learned bias per head and `(|dy|, |dx|)` offset (LeViT's).
#[derive(Debug)]
struct Attention {
    qkv: nn::Linear,
    proj: nn::Linear,
    /// `[heads, ws*ws]`, indexed by `|dy|*ws + |dx|`.
    attention_biases: Tensor,
    /// `[ws*ws * ws*ws]` offset index of every query/key pair of a window.
    bias_idx: Tensor,
    num_heads: i64,
    layout: QkvLayout,
    ws: i64,
    /// For a map smaller than the window ([`Attention::forward_one_window`]): its size and the
    /// offset indices of query/key pairs among its positions and from them to the padding.
    one_window: RefCell<Option<((i64, i64), Tensor, Tensor)>>,
}

impl Attention {
    fn new(p: nn::Path, dim: i64, heads: i64, ws: i64) -> Self {
        let pts: Vec<(i64, i64)> = (0..ws).flat_map(|i| (0..ws).map(move |j| (i, j))).collect();
        let idx: Vec<i64> = pts
            .iter()
            .flat_map(|a| {
                pts.iter()
                    .map(move |b| (a.0 - b.0).abs() * ws + (a.1 - b.1).abs())
            })
            .collect();
        Self {
            qkv: linear(&p / "qkv", dim, 3 * dim, true),
            proj: linear(&p / "proj", dim, dim, true),
            attention_biases: p.zeros("attention_biases", &[heads, ws * ws]),
            bias_idx: Tensor::from_slice(&idx),
            num_heads: heads,
            layout: QkvLayout::PerHead { heads },
            ws,
            one_window: RefCell::new(None),
        }
    }

    /// `x: [windows, ws*ws, dim]` (already normalised) -> same shape.
    fn forward_t(&self, x: &Tensor, sites: &BlockSites, train: bool) -> Tensor {
        let (b, n, d) = x.size3().expect("windows are [windows, tokens, dim]");
        let (nh, hd) = (self.num_heads, d / self.num_heads);
        let qkv = linear_with(&self.qkv, &sites.qkv, x, train);
        let parts = qkv.view([b, n, nh, 3 * hd]).split(hd, 3);
        let [q, k, v] = [0, 1, 2].map(|i| parts[i].permute([0, 2, 1, 3]));
        let bias = self
            .attention_biases
            .index_select(1, &self.bias_idx.to_device(x.device()))
            .view([nh, n, n]);
        let o = crate::attention::attention(&q, &k, &v, Some(&bias));
        linear_with(
            &self.proj,
            &sites.proj,
            &o.transpose(1, 2).reshape([b, n, d]),
            train,
        )
    }

    /// The attention of an `h x w` map that one window holds with padding (`h, w <= ws`, not
    /// both equal): `x: [batch, h*w + 1, dim]`, normalised, its last token the padding's (the
    /// norm of a zero token) -> `[batch, h*w, dim]`, the map's own positions.
    ///
    /// The reference pads the map to the window with zero tokens, so every padded position
    /// holds that one token: one key and one value. A query's weights over the padded
    /// positions add up to `exp(q·k_pad·scale) · Σ_j exp(bias_j)`, which is one key with the
    /// bias `log Σ_j exp(bias_j)` over them; and the reference crops the padded positions'
    /// outputs, so their queries are not computed. The same function of the same weights
    /// (differentiable in the bias table too), with `h*w` queries and `h*w + 1` keys instead
    /// of `ws² x ws²`: LiteMedSAM's 12 x 12 grid at 48 px in its 14 x 14 window computes 54 %
    /// of the scores, and its `qkv` and `proj` 74 % of the rows.
    fn forward_one_window(
        &self,
        x: &Tensor,
        (h, w): (i64, i64),
        sites: &BlockSites,
        train: bool,
    ) -> Tensor {
        let (b, n1, d) = x.size3().expect("tokens are [batch, tokens, dim]");
        let n = h * w;
        assert_eq!(n1, n + 1, "one window: the map's tokens and the padding's");
        let (nh, hd) = (self.num_heads, d / self.num_heads);
        let qkv = linear_with(&self.qkv, &sites.qkv, x, train);
        let parts = qkv.view([b, n1, nh, 3 * hd]).split(hd, 3);
        let [q, k, v] = [0, 1, 2].map(|i| parts[i].permute([0, 2, 1, 3]));
        let bias = self.one_window_bias(h, w, x.device());
        let o = crate::attention::attention(&q.narrow(2, 0, n), &k, &v, Some(&bias));
        linear_with(
            &self.proj,
            &sites.proj,
            &o.transpose(1, 2).reshape([b, n, d]),
            train,
        )
    }

    /// `[heads, h*w, h*w + 1]`: the bias between the map's positions, then each position's
    /// `log Σ exp(bias)` over the window's padded positions.
    fn one_window_bias(&self, h: i64, w: i64, device: tch::Device) -> Tensor {
        let mut cache = self.one_window.borrow_mut();
        if !matches!(&*cache, Some((hw, _, _)) if *hw == (h, w)) {
            let ws = self.ws;
            let grid = |rows: i64, cols: i64| -> Vec<(i64, i64)> {
                (0..rows)
                    .flat_map(|i| (0..cols).map(move |j| (i, j)))
                    .collect()
            };
            let real = grid(h, w);
            let pad: Vec<(i64, i64)> = grid(ws, ws)
                .into_iter()
                .filter(|&(i, j)| i >= h || j >= w)
                .collect();
            let offsets = |keys: &[(i64, i64)]| -> Vec<i64> {
                real.iter()
                    .flat_map(|a| {
                        keys.iter()
                            .map(move |b| (a.0 - b.0).abs() * ws + (a.1 - b.1).abs())
                    })
                    .collect()
            };
            *cache = Some((
                (h, w),
                Tensor::from_slice(&offsets(&real)),
                Tensor::from_slice(&offsets(&pad)),
            ));
        }
        let (_, to_real, to_pad) = cache.as_ref().expect("filled above");
        let (nh, n) = (self.num_heads, h * w);
        let real = self
            .attention_biases
            .index_select(1, &to_real.to_device(device))
            .view([nh, n, n]);
        let pad = self
            .attention_biases
            .index_select(1, &to_pad.to_device(device))
            .view([nh, n, -1])
            .logsumexp([-1i64].as_slice(), true);
        Tensor::cat(&[real, pad], -1)
    }
}

/// One TinyViT block; `sites` are empty until a method fills them.
#[derive(Debug)]
pub struct TinyVitBlock {
    attn_norm: nn::LayerNorm,
    attn: Attention,
    local_conv: ConvBn,
    mlp_norm: nn::LayerNorm,
    mlp: Mlp,
    pub dim: i64,
    pub window_size: i64,
    pub sites: BlockSites,
}

impl TinyVitBlock {
    pub(super) fn new(p: nn::Path, c: &TinyVitConfig, stage: usize) -> Self {
        let (d, ws) = (c.embed_dims[stage], c.window_sizes[stage]);
        let hidden = (d as f64 * c.mlp_ratio) as i64;
        Self {
            attn_norm: layer_norm(&p / "attn" / "norm", d, 1e-5),
            attn: Attention::new(&p / "attn", d, c.num_heads[stage], ws),
            local_conv: ConvBn::new(&p / "local_conv", d, d, c.local_conv_size, 1, d),
            mlp_norm: layer_norm(&p / "mlp" / "norm", d, 1e-5),
            mlp: Mlp::new(&p / "mlp", d, hidden),
            dim: d,
            window_size: ws,
            sites: BlockSites::default(),
        }
    }

    /// Windowed attention of `x: [batch, h*w, dim]`; returns it with `LN x` (for the sites).
    /// As in the reference, the map is zero-padded to whole windows **before** the norm.
    fn attend(&self, x: &Tensor, h: i64, w: i64, train: bool) -> (Tensor, Tensor) {
        let (b, _, d) = x.size3().expect("3-D");
        let ws = self.window_size;
        let (ph, pw) = ((ws - h % ws) % ws, (ws - w % ws) % ws);
        let (hp, wp) = (h + ph, w + pw);
        if (hp, wp) == (ws, ws) && ph + pw > 0 {
            // One padded window: the padding as one token (`Attention::forward_one_window`).
            let normed = self.attn_norm.forward(&x.constant_pad_nd([0, 0, 0, 1]));
            let a = self
                .attn
                .forward_one_window(&normed, (h, w), &self.sites, train);
            return (a, normed.narrow(1, 0, h * w).contiguous());
        }
        let normed = self
            .attn_norm
            .forward(&x.view([b, h, w, d]).constant_pad_nd([0, 0, 0, pw, 0, ph]));
        let windows = normed
            .view([b, hp / ws, ws, wp / ws, ws, d])
            .transpose(2, 3)
            .reshape([-1, ws * ws, d]);
        let a = self
            .attn
            .forward_t(&windows, &self.sites, train)
            .view([b, hp / ws, wp / ws, ws, ws, d])
            .transpose(2, 3)
            .reshape([b, hp, wp, d]);
        let crop = |t: Tensor| t.narrow(1, 0, h).narrow(2, 0, w).reshape([b, h * w, d]);
        (crop(a), crop(normed))
    }

    /// How the fused `qkv` orders its rows (per head).
    pub(super) fn qkv_layout(&self) -> QkvLayout {
        self.attn.layout
    }

    /// `x: [batch, h*w, dim]` on an `h x w` grid.
    pub fn forward_t(&self, x: &Tensor, h: i64, w: i64, bn_train: bool, train: bool) -> Tensor {
        let (b, l, d) = x.size3().expect("TinyViT block input is [batch, h*w, dim]");
        assert_eq!(l, h * w, "TinyViT block: {l} tokens for a {h}x{w} grid");
        // Inserted modules may share work between their applications in this block.
        let _block = crate::sites::BlockScope::enter();
        let layout = TokenLayout { prefix: 0, h, w };
        let s = &self.sites;
        let (a, normed) = self.attend(x, h, w, train);
        let a = apply_token(&s.attn_branch, a, layout, train);
        let x = add_parallel(&s.attn_parallel, x + a, x, &normed, layout, train);
        let x = apply_token(&s.after_attn, x, layout, train);
        let map = x.transpose(1, 2).reshape([b, d, h, w]);
        let x = self
            .local_conv
            .forward_t(&map, bn_train)
            .view([b, d, l])
            .transpose(1, 2);
        let normed = self.mlp_norm.forward(&x);
        let m = self.mlp.forward_t(&normed, &s.fc1, &s.fc2, train);
        let m = apply_token(&s.mlp_branch, m, layout, train);
        let x = add_parallel(&s.mlp_parallel, &x + m, &x, &normed, layout, train);
        apply_token(&s.after_mlp, x, layout, train)
    }
}
