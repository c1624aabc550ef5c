"""Writes the example workflows (ComfyUI UI format) in this folder.

    python workflows/make_workflows.py

Each workflow is described compactly below (nodes, widget values, connections) and
laid out left to right. The modes are the ones a 12 GB GPU needs; see the README's
"Example workflows" section for why.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Output slot types of the nodes used here (name, type) in slot order.
OUTPUTS = {
    "PinStreamLoadDiffusionModel": [("MODEL", "MODEL")],
    "PinStreamLoadCheckpoint": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "PinStreamLoadCLIP": [("CLIP", "CLIP")],
    "PinStreamLoadVAE": [("VAE", "VAE")],
    "PinStreamOffloadCLIP": [("CLIP", "CLIP")],
    "PinStreamStats": [("stats", "STRING")],
    "DualCLIPLoader": [("CLIP", "CLIP")],
    "VAELoader": [("VAE", "VAE")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "FluxGuidance": [("CONDITIONING", "CONDITIONING")],
    "EmptyLatentImage": [("LATENT", "LATENT")],
    "EmptySD3LatentImage": [("LATENT", "LATENT")],
    "EmptyHunyuanLatentVideo": [("LATENT", "LATENT")],
    "ModelSamplingSD3": [("MODEL", "MODEL")],
    "KSampler": [("LATENT", "LATENT")],
    "KSamplerAdvanced": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "SaveImage": [],
    "SaveAnimatedWEBP": [],
    "LoadImage": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    "CLIPVisionLoader": [("CLIP_VISION", "CLIP_VISION")],
    "CLIPVisionEncode": [("CLIP_VISION_OUTPUT", "CLIP_VISION_OUTPUT")],
    "WanImageToVideo": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
    "PreviewImage": [],
    "LoadVideo": [("VIDEO", "VIDEO")],
    "GetVideoComponents": [("images", "IMAGE"), ("audio", "AUDIO"), ("fps", "FLOAT")],
    "PinStreamLoadFlashPortrait": [("pipe", "FLASH_PORTRAIT_PIPE"), ("face_align_models", "FACE_ALIGN_MODELS")],
    # ComfyUI-FlashPortrait's nodes (its node pack, not part of ComfyUI)
    "FlashPortraitFeatureExtractor": [("head_emo_features", "HEAD_EMO_FEAT"), ("fps", "FLOAT"), ("total_frames", "INT")],
    "FlashPortraitSampler": [("IMAGE", "IMAGE")],
    # ComfyUI-WanVideoWrapper's nodes (its node pack, not part of ComfyUI)
    "WanVideoModelLoader": [("model", "WANVIDEOMODEL")],
    "PinStreamOffloadWanVideoModel": [("model", "WANVIDEOMODEL")],
    "LoadWanVideoT5TextEncoder": [("wan_t5_model", "WANTEXTENCODER")],
    "WanVideoTextEncode": [("text_embeds", "WANVIDEOTEXTEMBEDS")],
    "WanVideoEmptyEmbeds": [("image_embeds", "WANVIDIMAGE_EMBEDS")],
    "WanVideoSampler": [("samples", "LATENT")],
    "WanVideoVAELoader": [("vae", "WANVAE")],
    "WanVideoDecode": [("images", "IMAGE")],
}

# Linked inputs of each node, in order: (name, type).
INPUTS = {
    "PinStreamOffloadCLIP": [("clip", "CLIP")],
    "PinStreamStats": [("anything", "*")],
    "CLIPTextEncode": [("clip", "CLIP")],
    "FluxGuidance": [("conditioning", "CONDITIONING")],
    "ModelSamplingSD3": [("model", "MODEL")],
    "KSampler": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                 ("latent_image", "LATENT")],
    "KSamplerAdvanced": [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                         ("latent_image", "LATENT")],
    "VAEDecode": [("samples", "LATENT"), ("vae", "VAE")],
    "SaveImage": [("images", "IMAGE")],
    "SaveAnimatedWEBP": [("images", "IMAGE")],
    "PreviewImage": [("images", "IMAGE")],
    "CLIPVisionEncode": [("clip_vision", "CLIP_VISION"), ("image", "IMAGE")],
    "WanImageToVideo": [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"),
                        ("clip_vision_output", "CLIP_VISION_OUTPUT"), ("start_image", "IMAGE")],
    "PinStreamOffloadWanVideoModel": [("model", "WANVIDEOMODEL")],
    "GetVideoComponents": [("video", "VIDEO")],
    "FlashPortraitFeatureExtractor": [("face_align_models", "FACE_ALIGN_MODELS"), ("images", "IMAGE")],
    "FlashPortraitSampler": [("pipe", "FLASH_PORTRAIT_PIPE"), ("head_emo_features", "HEAD_EMO_FEAT"),
                             ("image", "IMAGE")],
    "WanVideoTextEncode": [("t5", "WANTEXTENCODER")],
    "WanVideoSampler": [("model", "WANVIDEOMODEL"), ("text_embeds", "WANVIDEOTEXTEMBEDS"),
                        ("image_embeds", "WANVIDIMAGE_EMBEDS")],
    "WanVideoDecode": [("vae", "WANVAE"), ("samples", "LATENT")],
}

NEG_WAN = ("bright colors, overexposed, static, blurred details, subtitles, worst quality, low quality, "
            "JPEG artifacts, ugly, deformed, extra fingers, poorly drawn hands, still picture")


# The model files the workflows load: file name -> (models folder, download URL). The URLs
# are the ones ComfyUI's own workflow templates (github.com/Comfy-Org/workflow_templates)
# give for these files, so ComfyUI's missing-models dialog offers the same downloads.
HF = "https://huggingface.co"
WAN21 = f"{HF}/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
WAN22 = f"{HF}/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
FLUX_TE = f"{HF}/comfyanonymous/flux_text_encoders/resolve/main"
KIJAI_WAN = f"{HF}/Kijai/WanVideo_comfy/resolve/main"  # the files ComfyUI-WanVideoWrapper's examples load
MODELS = {
    "sd_xl_base_1.0.safetensors": (
        "checkpoints",
        f"{HF}/stabilityai/stable-diffusion-xl-base-1.0/resolve/main/sd_xl_base_1.0.safetensors?download=true"),
    "flux1-dev.safetensors": ("diffusion_models", f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors"),
    "t5xxl_fp16.safetensors": ("text_encoders", f"{FLUX_TE}/t5xxl_fp16.safetensors"),
    "clip_l.safetensors": ("text_encoders", f"{FLUX_TE}/clip_l.safetensors"),
    "ae.safetensors": ("vae",
                       f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors"),
    "wan2.1_t2v_14B_bf16.safetensors": ("diffusion_models",
                                        f"{WAN21}/diffusion_models/wan2.1_t2v_14B_bf16.safetensors"),
    "wan2.1_i2v_720p_14B_bf16.safetensors": ("diffusion_models",
                                             f"{WAN21}/diffusion_models/wan2.1_i2v_720p_14B_bf16.safetensors"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": ("text_encoders",
                                               f"{WAN21}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors"),
    "wan_2.1_vae.safetensors": ("vae", f"{WAN21}/vae/wan_2.1_vae.safetensors"),
    "clip_vision_h.safetensors": ("clip_vision", f"{WAN21}/clip_vision/clip_vision_h.safetensors"),
    "wan2.2_i2v_high_noise_14B_fp16.safetensors": (
        "diffusion_models", f"{WAN22}/diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors"),
    "wan2.2_i2v_low_noise_14B_fp16.safetensors": (
        "diffusion_models", f"{WAN22}/diffusion_models/wan2.2_i2v_low_noise_14B_fp16.safetensors"),
    "Wan2_1-T2V-14B_fp8_e4m3fn.safetensors": ("diffusion_models", f"{KIJAI_WAN}/Wan2_1-T2V-14B_fp8_e4m3fn.safetensors"),
    "umt5-xxl-enc-bf16.safetensors": ("text_encoders", f"{KIJAI_WAN}/umt5-xxl-enc-bf16.safetensors"),
    "Wan2_1_VAE_bf16.safetensors": ("vae", f"{KIJAI_WAN}/Wan2_1_VAE_bf16.safetensors"),
}

# Loader nodes: which widget values name a model file, and the folder ComfyUI looks in.
LOADER_FILES = {
    "PinStreamLoadCheckpoint": ("checkpoints", (0,)),
    "PinStreamLoadDiffusionModel": ("diffusion_models", (0,)),
    "PinStreamLoadCLIP": ("text_encoders", (0,)),
    "PinStreamLoadVAE": ("vae", (0,)),
    "DualCLIPLoader": ("text_encoders", (0, 1)),
    "VAELoader": ("vae", (0,)),
    "CLIPVisionLoader": ("clip_vision", (0,)),
    "WanVideoModelLoader": ("diffusion_models", (0,)),
    "LoadWanVideoT5TextEncoder": ("text_encoders", (0,)),
    "WanVideoVAELoader": ("vae", (0,)),
}


def models_of(typ, widgets):
    """properties.models of a loader node: name, url and directory of each file it loads."""
    if typ not in LOADER_FILES:
        return None
    directory, slots = LOADER_FILES[typ]
    out = []
    for i in slots:
        name = widgets[i]
        folder, url = MODELS[name]  # a loader file without a download URL is an error here
        assert folder == directory, (name, folder, directory)
        out.append({"name": name, "url": url, "directory": directory})
    return out


# Node sizes. LiteGraph draws a node's body (its title bar, NODE_TITLE_HEIGHT = 30, sits above
# `pos`) at least as tall as its slots and widgets: 20 per slot row, 24 per widget (54 for a
# multiline text box), plus a margin; a node saved smaller is enlarged when the workflow loads,
# over whatever lies below it. The sizes here are at least that, plus room for what the node
# shows after a run: the PinStream loaders' one-line plan, the Stats report, image previews.
TITLE_HEIGHT = 30
MULTILINE = {"CLIPTextEncode"}
SHOWS_TEXT = {"PinStreamLoadCheckpoint", "PinStreamLoadDiffusionModel", "PinStreamLoadCLIP", "PinStreamLoadVAE",
              "PinStreamOffloadModel", "PinStreamOffloadCLIP", "PinStreamOffloadWanVideoModel",
              "PinStreamLoadFlashPortrait"}
MULTILINE_NODES = {"WanVideoTextEncode": 2, "FlashPortraitSampler": 2, "PinStreamLoadFlashPortrait": 1}  # nodes with multiline text boxes besides CLIPTextEncode: how many
WIDTH = {"PinStreamStats": 640, "CLIPTextEncode": 400, "WanVideoTextEncode": 400, "FlashPortraitSampler": 400,
         "LoadVideo": 360, "SaveImage": 420, "SaveAnimatedWEBP": 420, "PreviewImage": 420,
         "LoadImage": 360}
EXTRA_HEIGHT = {"PinStreamStats": 280, "WanVideoTextEncode": 60, "FlashPortraitSampler": 60, "LoadVideo": 324, "SaveImage": 360, "SaveAnimatedWEBP": 300, "PreviewImage": 360, "LoadImage": 300,
                "CLIPTextEncode": 60}
PLAN_TEXT_HEIGHT = 110  # a loader's plan line, wrapped in a 380-wide node
GAP_X, GAP_Y = 60, 40


def min_body_height(typ, n_widgets):
    """LiteGraph's computeSize height for a node with these slots and widgets."""
    slots = max(len(INPUTS.get(typ, [])), len(OUTPUTS[typ]), 1)
    if typ in MULTILINE:
        return 20 * slots + 54 * n_widgets + (14 if n_widgets else 6)
    multi = MULTILINE_NODES.get(typ, 0)
    return 20 * slots + 54 * multi + 24 * (n_widgets - multi) + (14 if n_widgets else 6)


def node_size(typ, widgets):
    width = WIDTH.get(typ, 380 if typ.startswith("PinStream") else 320)
    height = min_body_height(typ, len(widgets)) + EXTRA_HEIGHT.get(typ, 0)
    if typ in SHOWS_TEXT:
        height += PLAN_TEXT_HEIGHT
    return [width, height]


def build(title, nodes, note, with_models=True):
    """nodes: list of (key, type, widgets, {input_name: (src_key, src_slot)}).

    Laid out left to right by depth (a node's column is one more than its deepest input's),
    each column stacked top to bottom, with no two nodes (title bars included) overlapping.
    with_models: put properties.models (from MODELS) on the loaders (off for graphs of
    local test files, which have no download)."""
    ids = {key: i + 1 for i, (key, *_rest) in enumerate(nodes)}
    links, out_links = [], {}
    for key, typ, _w, conns in nodes:
        for in_name, (src, slot) in conns.items():
            lid = len(links) + 1
            src_type = OUTPUTS[nodes[ids[src] - 1][1]][slot][1]
            in_slot = [n for n, _ in INPUTS[typ]].index(in_name)
            links.append([lid, ids[src], slot, ids[key], in_slot, src_type])
            out_links.setdefault((ids[src], slot), []).append(lid)
    col = {}
    for key, _typ, _widgets, conns in nodes:
        col[key] = 0 if not conns else 1 + max(col[src] for src, _ in conns.values())
    sizes = {key: node_size(typ, widgets) for key, typ, widgets, _ in nodes}
    col_x, x = {}, 40
    for c in range(max(col.values()) + 1):
        col_x[c] = x
        x += max((sizes[k][0] for k in col if col[k] == c), default=0) + GAP_X
    next_y = {}
    ui_nodes = []
    for order, (key, typ, widgets, conns) in enumerate(nodes):
        c = col[key]
        y = next_y.get(c, 40 + TITLE_HEIGHT)
        next_y[c] = y + sizes[key][1] + GAP_Y + TITLE_HEIGHT
        inputs = []
        for in_name, in_type in INPUTS.get(typ, []):
            link = next((lnk[0] for lnk in links if lnk[3] == ids[key] and lnk[4] == len(inputs)), None)
            inputs.append({"name": in_name, "type": in_type, "link": link})
        outputs = [{"name": n, "type": t, "links": out_links.get((ids[key], s), []), "slot_index": s}
                   for s, (n, t) in enumerate(OUTPUTS[typ])]
        properties = {"Node name for S&R": typ}
        models = models_of(typ, widgets) if with_models else None
        if models:
            properties["models"] = models
        ui_nodes.append({
            "id": ids[key], "type": typ, "pos": [col_x[c], y], "size": sizes[key],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": properties, "widgets_values": widgets,
        })
    return {
        "last_node_id": len(ui_nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
        "groups": [], "config": {}, "version": 0.4,
        "extra": {"pinstream": {"title": title, "note": note}},
    }


def ps(mode, budget=0.0, prefetch=1, transfer="auto", ram=0.0, device=None):
    """The offload widgets of a PinStream loader or offload node, in order: mode,
    vram_budget_gb, prefetch_blocks, pin_memory, transfer_dtype, (Load CLIP's device),
    ram_budget_gb (0: the whole model in RAM)."""
    return [mode, budget, prefetch, True, transfer] + ([device] if device is not None else []) + [ram]


WORKFLOWS = {
    "sdxl_pinstream.json": build("SDXL on a 12 GB GPU", [
        ("ckpt", "PinStreamLoadCheckpoint", ["sd_xl_base_1.0.safetensors", *ps("full_load")], {}),
        ("pos", "CLIPTextEncode", ["a lighthouse on a cliff at sunset, detailed, 35mm photo"], {"clip": ("ckpt", 1)}),
        ("neg", "CLIPTextEncode", ["blurry, low quality"], {"clip": ("ckpt", 1)}),
        ("lat", "EmptyLatentImage", [1024, 1024, 1], {}),
        ("ks", "KSampler", [42, "fixed", 25, 6.5, "dpmpp_2m", "karras", 1.0],
         {"model": ("ckpt", 0), "positive": ("pos", 0), "negative": ("neg", 0), "latent_image": ("lat", 0)}),
        ("dec", "VAEDecode", [], {"samples": ("ks", 0), "vae": ("ckpt", 2)}),
        ("save", "SaveImage", ["pinstream_sdxl"], {"images": ("dec", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("ks", 0)}),
    ], "SDXL's UNet (5 GB in fp16) fits a 12 GB GPU: full_load is fastest."),
    "flux_dev_pinstream.json": build("FLUX.1-dev on a 12 GB GPU", [
        ("unet", "PinStreamLoadDiffusionModel", ["flux1-dev.safetensors", "default", *ps("budget", 8.0, 2)], {}),
        ("clip", "DualCLIPLoader", ["t5xxl_fp16.safetensors", "clip_l.safetensors", "flux", "default"], {}),
        ("clip_ps", "PinStreamOffloadCLIP", ps("model_offload"), {"clip": ("clip", 0)}),
        ("vae", "VAELoader", ["ae.safetensors"], {}),
        ("pos", "CLIPTextEncode", ["a red fox in fresh snow, morning light"], {"clip": ("clip_ps", 0)}),
        ("guid", "FluxGuidance", [3.5], {"conditioning": ("pos", 0)}),
        ("neg", "CLIPTextEncode", [""], {"clip": ("clip_ps", 0)}),
        ("lat", "EmptySD3LatentImage", [1024, 1024, 1], {}),
        ("ks", "KSampler", [7, "fixed", 20, 1.0, "euler", "simple", 1.0],
         {"model": ("unet", 0), "positive": ("guid", 0), "negative": ("neg", 0), "latent_image": ("lat", 0)}),
        ("dec", "VAEDecode", [], {"samples": ("ks", 0), "vae": ("vae", 0)}),
        ("save", "SaveImage", ["pinstream_flux"], {"images": ("dec", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("ks", 0)}),
    ], "FLUX.1-dev is 23.8 GB in bf16: budget mode keeps 8 GB of it resident and streams the rest; "
       "T5-XXL lives in pinned RAM (model_offload) and is uploaded only to encode."),
    "wan21_t2v_14b_pinstream.json": build("Wan 2.1 T2V 14B on a 12 GB GPU", [
        ("unet", "PinStreamLoadDiffusionModel", ["wan2.1_t2v_14B_bf16.safetensors", "default",
                                                 *ps("budget", 9.0, 2)], {}),
        ("clip", "PinStreamLoadCLIP", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", *ps("model_offload", device="default")],
         {}),
        ("vae", "PinStreamLoadVAE", ["wan_2.1_vae.safetensors", *ps("full_load")], {}),
        ("shift", "ModelSamplingSD3", [8.0], {"model": ("unet", 0)}),
        ("pos", "CLIPTextEncode", ["a corgi running on a beach at golden hour, slow motion"], {"clip": ("clip", 0)}),
        ("neg", "CLIPTextEncode", [NEG_WAN], {"clip": ("clip", 0)}),
        ("lat", "EmptyHunyuanLatentVideo", [832, 480, 33, 1], {}),
        ("ks", "KSampler", [3, "fixed", 30, 6.0, "uni_pc", "simple", 1.0],
         {"model": ("shift", 0), "positive": ("pos", 0), "negative": ("neg", 0), "latent_image": ("lat", 0)}),
        ("dec", "VAEDecode", [], {"samples": ("ks", 0), "vae": ("vae", 0)}),
        ("save", "SaveAnimatedWEBP", ["pinstream_wan21", 16.0, False, 90, "default"], {"images": ("dec", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("ks", 0)}),
    ], "The 14B DiT is 28.6 GB in bf16: budget 9 GB with prefetch 2 on a 12 GB card; umt5-xxl in pinned RAM."),
    "wan22_i2v_a14b_two_experts_pinstream.json": build("Wan 2.2 I2V A14B (two experts) on a 12 GB GPU", [
        ("high", "PinStreamLoadDiffusionModel", ["wan2.2_i2v_high_noise_14B_fp16.safetensors", "default",
                                                 *ps("budget", 8.0, 2)], {}),
        ("low", "PinStreamLoadDiffusionModel", ["wan2.2_i2v_low_noise_14B_fp16.safetensors", "default",
                                                *ps("budget", 8.0, 2)], {}),
        ("clip", "PinStreamLoadCLIP", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", *ps("model_offload", device="default")],
         {}),
        ("vae", "PinStreamLoadVAE", ["wan_2.1_vae.safetensors", *ps("full_load")], {}),
        ("img", "LoadImage", ["example.png", "image"], {}),
        ("shift_h", "ModelSamplingSD3", [8.0], {"model": ("high", 0)}),
        ("shift_l", "ModelSamplingSD3", [8.0], {"model": ("low", 0)}),
        ("pos", "CLIPTextEncode", ["the woman turns to the camera and smiles, hair moving in the wind"],
         {"clip": ("clip", 0)}),
        ("neg", "CLIPTextEncode", [NEG_WAN], {"clip": ("clip", 0)}),
        ("i2v", "WanImageToVideo", [832, 480, 81, 1],
         {"positive": ("pos", 0), "negative": ("neg", 0), "vae": ("vae", 0), "start_image": ("img", 0)}),
        ("ks_h", "KSamplerAdvanced", ["enable", 5, "fixed", 20, 3.5, "euler", "simple", 0, 10, "enable"],
         {"model": ("shift_h", 0), "positive": ("i2v", 0), "negative": ("i2v", 1), "latent_image": ("i2v", 2)}),
        ("ks_l", "KSamplerAdvanced", ["disable", 5, "fixed", 20, 3.5, "euler", "simple", 10, 10000, "disable"],
         {"model": ("shift_l", 0), "positive": ("i2v", 0), "negative": ("i2v", 1), "latent_image": ("ks_h", 0)}),
        ("dec", "VAEDecode", [], {"samples": ("ks_l", 0), "vae": ("vae", 0)}),
        ("save", "SaveAnimatedWEBP", ["pinstream_wan22", 16.0, False, 90, "default"], {"images": ("dec", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("ks_l", 0)}),
    ], "Two 28.6 GB experts take turns: each keeps 8 GB resident while it runs; switching experts frees the "
       "other's VRAM by re-pointing its weights at pinned RAM (no device-to-host copy). Needs about 70 GB of RAM; "
       "with less, give each expert a ram_budget_gb (python -m pinstream recommend computes it): the rest of each "
       "expert lives on disk and is read from there as it runs."),
    "flashportrait_pinstream.json": build("ComfyUI-FlashPortrait on a 24 GB GPU", [
        ("fp", "PinStreamLoadFlashPortrait", ["bf16", True, "", 16.0, 2, True, "auto", 0.0], {}),
        ("ref", "LoadImage", ["portrait.png", "image"], {}),
        ("drv", "LoadVideo", ["driving.mp4", "image"], {}),
        ("comp", "GetVideoComponents", [], {"video": ("drv", 0)}),
        ("feat", "FlashPortraitFeatureExtractor", [25.0, 51, 30],
         {"face_align_models": ("fp", 1), "images": ("comp", 0)}),
        ("sampler", "FlashPortraitSampler", ["The man is singing", NEG_WAN, 42, "fixed", 30, 1.0, 4.0, 1.0, 4.0, 720,
                                             5.0, 51, 30],
         {"pipe": ("fp", 0), "head_emo_features": ("feat", 0), "image": ("ref", 0)}),
        ("save", "SaveAnimatedWEBP", ["pinstream_flashportrait", 25.0, False, 90, "default"],
         {"images": ("sampler", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("sampler", 0)}),
    ], "FlashPortrait's Feature Extractor and Sampler with its pipe from FlashPortrait Loader (PinStream), which builds "
       "the pipe in host RAM (FlashPortrait's own loader puts all 40 GB on the GPU): the Wan 2.1 I2V 14B 720P "
       "transformer streams within 16 GB, the text, image and portrait encoders and the VAE take turns on the GPU "
       "(model_offload). For a 12 GB GPU set vram_budget_gb to 7. Its models download into models/flash_portrait."),
    "wanvideowrapper_t2v_14b_pinstream.json": build("ComfyUI-WanVideoWrapper: Wan 2.1 T2V 14B on a 24 GB GPU", [
        ("model", "WanVideoModelLoader", ["Wan2_1-T2V-14B_fp8_e4m3fn.safetensors", "bf16", "fp8_e4m3fn",
                                          "offload_device", "sdpa"], {}),
        ("ps", "PinStreamOffloadWanVideoModel", ps("budget", 12.0, 2), {"model": ("model", 0)}),
        ("t5", "LoadWanVideoT5TextEncoder", ["umt5-xxl-enc-bf16.safetensors", "bf16", "offload_device", "disabled"],
         {}),
        ("text", "WanVideoTextEncode", ["a red panda balancing on a bamboo stem in front of a waterfall, a bird lands "
                                        "on its head", NEG_WAN, True], {"t5": ("t5", 0)}),
        ("emb", "WanVideoEmptyEmbeds", [832, 480, 81], {}),
        ("sampler", "WanVideoSampler", [25, 6.0, 5.0, 3, "fixed", True, "unipc", 0, 1.0],
         {"model": ("ps", 0), "text_embeds": ("text", 0), "image_embeds": ("emb", 0)}),
        ("vae", "WanVideoVAELoader", ["Wan2_1_VAE_bf16.safetensors", "bf16"], {}),
        ("dec", "WanVideoDecode", [True, 272, 272, 144, 128], {"vae": ("vae", 0), "samples": ("sampler", 0)}),
        ("save", "SaveAnimatedWEBP", ["pinstream_wanvideowrapper", 16.0, False, 90, "default"], {"images": ("dec", 0)}),
        ("stats", "PinStreamStats", [], {"anything": ("sampler", 0)}),
    ], "The wrapper's own loader and sampler; PinStream Offload (WanVideo Model) takes the model in place of the "
       "wrapper's block swap (leave WanVideo BlockSwap out): the fp8 14B transformer (14 GB) keeps 12 GB resident on a "
       "24 GB GPU and streams the rest from pinned RAM on a copy stream. For a 12 GB GPU set vram_budget_gb to 6."),
}


def main() -> int:
    for name, wf in WORKFLOWS.items():
        (HERE / name).write_text(json.dumps(wf, indent=1) + "\n")
        print(f"wrote workflows/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
