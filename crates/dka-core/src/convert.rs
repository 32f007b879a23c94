//! The one place where foreign checkpoint names become timm's (STYLE.md: like timm's
//! `checkpoint_filter_fn`). Recognised sources:
//! - torchvision ViT (`conv_proj`, `encoder.layers.encoder_layer_N.*`, `heads.head`);
//! - SAM / MedSAM (`image_encoder.*`, `mlp.lin1/2`; prompt encoder and mask decoder dropped);
//!   MobileSAM / LiteMedSAM (`image_encoder.*` of a TinyViT: the prefix is stripped and the
//!   names are [`crate::tinyvit`]'s);
//! - wrappers that prefix every key with `module.` (DDP) or `model.`.
//!
//! torchvision ResNets already use timm's names. BatchNorm `num_batches_tracked` counters (integer
//! bookkeeping for momentum-free averaging, unused by a forward pass) are dropped from every
//! format, so a `.pth` converted as it is loads without "unused" keys.

/// Where a checkpoint's names came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Timm,
    TorchvisionVit,
    Sam,
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Timm => "timm",
            Self::TorchvisionVit => "torchvision ViT",
            Self::Sam => "SAM / MedSAM",
        })
    }
}

pub fn detect(names: &[&str]) -> SourceFormat {
    if names.iter().any(|n| n.starts_with("image_encoder.")) {
        SourceFormat::Sam
    } else if names
        .iter()
        .any(|n| n.starts_with("encoder.layers.encoder_layer_") || *n == "conv_proj.weight")
    {
        SourceFormat::TorchvisionVit
    } else {
        SourceFormat::Timm
    }
}

fn strip_wrapper(name: &str) -> &str {
    let mut n = name;
    for prefix in ["module.", "model."] {
        n = n.strip_prefix(prefix).unwrap_or(n);
    }
    n
}

fn torchvision_vit(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("encoder.layers.encoder_layer_") {
        let (i, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let tail = match tail {
            "self_attention.in_proj_weight" => "attn.qkv.weight".to_string(),
            "self_attention.in_proj_bias" => "attn.qkv.bias".to_string(),
            t => t
                .replacen("self_attention.out_proj.", "attn.proj.", 1)
                .replacen("ln_1.", "norm1.", 1)
                .replacen("ln_2.", "norm2.", 1)
                .replacen("mlp.0.", "mlp.fc1.", 1)
                .replacen("mlp.linear_1.", "mlp.fc1.", 1)
                .replacen("mlp.3.", "mlp.fc2.", 1)
                .replacen("mlp.linear_2.", "mlp.fc2.", 1),
        };
        return format!("blocks.{i}.{tail}");
    }
    match name {
        "class_token" => "cls_token".into(),
        "encoder.pos_embedding" => "pos_embed".into(),
        n => n
            .replacen("conv_proj.", "patch_embed.proj.", 1)
            .replacen("encoder.ln.", "norm.", 1)
            .replacen("heads.head.", "head.", 1),
    }
}

/// Renames a checkpoint's keys to timm's; keys that have no place in a backbone (SAM's
/// prompt encoder and mask decoder) are dropped. Returns the detected source format.
pub fn to_timm<T>(tensors: Vec<(String, T)>) -> (Vec<(String, T)>, SourceFormat) {
    let names: Vec<&str> = tensors.iter().map(|(n, _)| strip_wrapper(n)).collect();
    let format = detect(&names);
    let out = tensors
        .into_iter()
        .filter_map(|(name, t)| {
            let n = strip_wrapper(&name);
            if n.ends_with(".num_batches_tracked") {
                return None;
            }
            let renamed = match format {
                SourceFormat::Timm => n.to_string(),
                SourceFormat::TorchvisionVit => torchvision_vit(n),
                SourceFormat::Sam => n
                    .strip_prefix("image_encoder.")?
                    .replacen("mlp.lin", "mlp.fc", 1),
            };
            Some((renamed, t))
        })
        .collect();
    (out, format)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(keys: &[&str]) -> Vec<String> {
        let (out, _) = to_timm(keys.iter().map(|k| (k.to_string(), ())).collect());
        out.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn torchvision_vit_names_become_timm_names() {
        let got = renamed(&[
            "conv_proj.weight",
            "class_token",
            "encoder.pos_embedding",
            "encoder.layers.encoder_layer_3.ln_1.weight",
            "encoder.layers.encoder_layer_3.self_attention.in_proj_weight",
            "encoder.layers.encoder_layer_3.self_attention.in_proj_bias",
            "encoder.layers.encoder_layer_3.self_attention.out_proj.bias",
            "encoder.layers.encoder_layer_3.ln_2.bias",
            "encoder.layers.encoder_layer_3.mlp.0.weight",
            "encoder.layers.encoder_layer_3.mlp.linear_2.bias",
            "encoder.ln.weight",
            "heads.head.bias",
        ]);
        assert_eq!(
            got,
            [
                "patch_embed.proj.weight",
                "cls_token",
                "pos_embed",
                "blocks.3.norm1.weight",
                "blocks.3.attn.qkv.weight",
                "blocks.3.attn.qkv.bias",
                "blocks.3.attn.proj.bias",
                "blocks.3.norm2.bias",
                "blocks.3.mlp.fc1.weight",
                "blocks.3.mlp.fc2.bias",
                "norm.weight",
                "head.bias",
            ]
        );
    }

    #[test]
    fn sam_checkpoints_keep_only_the_image_encoder() {
        let got = renamed(&[
            "image_encoder.blocks.0.mlp.lin1.weight",
            "image_encoder.neck.0.weight",
            "mask_decoder.iou_token.weight",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        ]);
        assert_eq!(got, ["blocks.0.mlp.fc1.weight", "neck.0.weight"]);
    }

    #[test]
    fn litemedsam_keys_lose_their_prefix_and_batchnorm_counters() {
        let got = renamed(&[
            "image_encoder.patch_embed.seq.0.c.weight",
            "image_encoder.patch_embed.seq.0.bn.num_batches_tracked",
            "image_encoder.layers.1.blocks.0.attn.attention_biases",
            "image_encoder.layers.1.blocks.0.mlp.fc1.weight",
            "image_encoder.neck.3.bias",
            "mask_decoder.transformer.layers.0.mlp.lin1.weight",
        ]);
        assert_eq!(
            got,
            [
                "patch_embed.seq.0.c.weight",
                "layers.1.blocks.0.attn.attention_biases",
                "layers.1.blocks.0.mlp.fc1.weight",
                "neck.3.bias",
            ]
        );
        assert_eq!(
            renamed(&[
                "layer1.0.bn1.num_batches_tracked",
                "layer1.0.bn1.running_var"
            ]),
            ["layer1.0.bn1.running_var"]
        );
    }

    #[test]
    fn ddp_prefixes_are_stripped_and_timm_names_kept() {
        assert_eq!(
            renamed(&["module.blocks.0.attn.qkv.weight", "module.head.bias"]),
            ["blocks.0.attn.qkv.weight", "head.bias"]
        );
    }
}
