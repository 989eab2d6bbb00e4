"""The audit over every folder of both tracks of the public records (tests/data/records: all 60 folders of the
public repository at 4908dc46f, with their scripts): no crash, and each folder's verdict pinned.

Each row was reviewed by hand against the folder's own files (README, submission.json, logs, scripts); the
comment says why each failing or warning check is right. `fail` only for a fault the evidence shows; `warn`
for what a reviewer should look at. Expected: (overall verdict, checks that fail, checks that warn); overall
is `warn` when the JSON verdict is pass with warnings. Recurring reasons, not repeated per row:
- seed_count warn: fewer than 3 scored seeds on the record track;
- script_size warn: the log prints the size of the file that ran (`Code size: N bytes`) and no shipped script
  has that size (the byte difference is in the detail);
- train_data_after_timer warn: GPTQ calibration on training batches logged after `stopping_early`, training
  time + calibration time beyond 600 s + 1 s (accepted by the maintainers; a failure under --strict).
"""
import json

import pytest

from corpus import FOLDERS, RECORDS
from results.audit import CHECK_IDS, audit, overall
from results.load import find_logs, load
from results.parse import parse_log

pytestmark = pytest.mark.skipif(not FOLDERS, reason=f"{RECORDS} not present")

EXPECTED = {
    # ---- track_10min_16mb ----
    # one seed; train_v3.txt (the claimed run, 1.1929) embeds a script with a `resume_from` line the shipped
    # train_gpt.py lacks (60,906 B ran, 58,509 B shipped); train_v0-v2 are earlier versions, set aside
    "2026-03-17_LoRA_TTT": ("fail", ["provenance"], ["script_size", "seed_count"]),
    # OpenAI's baseline, one seed, scored on the first (larger) sp1024 export: +0.26% bytes/token, not a bug
    "2026-03-17_NaiveBaseline": ("warn", [], ["bpb_consistency", "seed_count"]),
    # claims seed 1337 (1.2197), the better of its two logs; the mean is 1.21989
    "2026-03-18_FP16Embed_WD3600": ("fail", ["mean_not_best"], ["seed_count"]),
    # submission.json claims the canonical run 1.20576 = best of 3; its own README gives the mean 1.20637
    "2026-03-18_LongContextSeq2048": ("fail", ["mean_not_best"], []),
    # the log's nvidia-smi shows 8x NVIDIA H200; its embedded source has LR_SCHEDULE, QAT and MLP_TYPE code
    # the shipped train_gpt.py lacks (50,919 B ran, 47,642 B shipped)
    "2026-03-18_LowerLR": ("fail", ["hardware", "provenance"], ["script_size", "seed_count"]),
    # ran on 8x NVIDIA H200 (its nvidia-smi table; its README says so): the rules say 8xH100 SXM
    "2026-03-19_10L_MixedPrecision": ("fail", ["hardware"], ["seed_count"]),
    # README claims seeds 1337/42/123 (mean 1.15015); the one log is seed 1337 at 1.16661, the others are
    # missing; the log's source lacks the zstd/NTK/LARS code of the shipped script (55,752 B vs 60,663 B)
    "2026-03-19_MLP3x_QAT_Int6_SlidingWindow": ("fail", ["claim_matches_logs", "provenance"],
                                                ["script_size", "seed_count"]),
    # train.log holds three runs of seed 1337, each after its own copy of the script; the claimed third one
    # ran the shipped train_gpt.py (provenance pass from its own source at train.log:2961)
    "2026-03-19_MixedQuant_Int6Int8_SlidingWindow": ("warn", [], ["seed_count"]),
    "2026-03-19_Seq2048_FP16Emb_TunedLR": ("fail", ["mean_not_best"], []),     # claims seed 3, the best of 3
    "2026-03-19_SlidingWindowEval": ("warn", [], ["script_size", "seed_count"]),   # 58,340 B ran, 58,357 shipped
    "2026-03-19_SlidingWindow_FP16Emb_10L_MuonWD_OvertoneInit": ("pass", [], []),
    # claims train.log (neither mean nor best), which ran the baseline script with environment overrides; the
    # shipped train_gpt.py has those values as defaults (its source differs from line 33); the reruns ran it
    "2026-03-19_TrainingOptSeq4096": ("fail", ["provenance"], ["config_consistency", "mean_not_best", "script_size"]),
    "2026-03-19_WarmdownQuantization": ("warn", [], ["seed_count"]),
    # a bare train.log: no README, submission.json or script; the log's own total is 16,186,500 bytes
    "2026-03-19_int6_STE QAT_ MLP_bigram _U_Net": ("fail", ["artifact_cap", "required_files"], ["seed_count"]),
    "2026-03-19_smeargate_orthoinit_muonwd": ("warn", [], ["required_files", "seed_count"]),  # ships train_gpt_v5.py
    # submission.json has no val_bpb; its "val_loss": 1.14276 is the 3-seed mean val_bpb (mean loss 1.9295)
    "2026-03-20_10L_Int5MLP_MuonWD04_SWA50": ("warn", [], ["claim_matches_logs"]),
    "2026-03-20_11L_EfficientPartialXSA_FA3_SWA120": ("warn", [], ["seed_count"]),
    # README: "Mean val_bpb: 1.1280. Submitted: seed 1337 (best)"
    "2026-03-20_11L_XSA4_EMA_Int6_MLP3x_WD04_1.1271": ("fail", ["mean_not_best"], []),
    "2026-03-20_Int6_MLP3x_SmearGate_BigramHash_MuonWD_SWA": ("pass", [], []),
    "2026-03-21_11L_XSA4_EMA_PartialRoPE_LateQAT_1.1248": ("fail", ["mean_not_best"], []),   # best seed 2025
    "2026-03-22_11L_EMA_GPTQ-lite_warmdown3500_QAT015_1.1233": ("fail", ["mean_not_best"], []),  # best seed 1337
    "2026-03-23_LeakyReLU_LegalTTT_ParallelMuon": ("pass", [], []),
    # the README says 1.1570 (3-seed mean); submission_ternary.json says 1.1565, seed 42's score; the files
    # are submission_ternary.json and train_gpt_cuda_ternary.py, not the names the rules ask for
    "2026-03-24_74M_Ternary_UNet_FP8_10L_8192BPE_YaRN_NeoMuon": ("fail", ["mean_not_best"], ["required_files"]),
    "2026-03-25_ValCalib_GPTQ_XSA_BigramHash3072": ("pass", [], []),
    "2026-03-29_Loader_FullGPTQ_XSA11_BigramHash2816": ("pass", [], []),      # calibration: 586.1 + 6.8 s
    "2026-03-31_ParallelResiduals_MiniDepthRecurrence": ("pass", [], []),
    # seed 42 ran a script 39 bytes shorter than seeds 1337 and 2025; none is the shipped size (68,206 B)
    "2026-04-01_Vocab4096_MLPMult4_WD085": ("warn", [], ["config_consistency", "script_size"]),
    # scored on 45,514,752 validation tokens, the canonical sp4096 split has 45,508,608
    "2026-04-03_MuonEqR_DepthRecurrence_WD090_AllInt6": ("warn", [], ["bpb_consistency"]),
    # seed 42 ran with TTT on (its TTT score broke); the claims are the sliding-window scores of all three
    "2026-04-04_SP4096_DepthRecurrence_ParallelResid_MuonEqR": ("warn", [], ["config_consistency"]),
    "2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2": ("pass", [], []),
    # every log's own total is over the cap (16,054,963-16,059,704 bytes) while submission.json claims
    # 15,976,275-15,979,649; train.log ran an older script (78,688 B, no clip_mult_* keys) than the seeds
    # (80,055 B = the shipped train_gpt_decode.py)
    "2026-04-06_SP8192_HessianSDClip_ProgressiveRecurrence": ("fail", ["artifact_cap"],
                                                              ["claim_matches_logs", "config_consistency",
                                                               "script_size"]),
    "2026-04-06_SP8192_QK5_LegalTTT_1.0828": ("pass", [], []),
    # scores match; two per-seed artifact sizes in submission.json differ from the logs by ~1 kB
    "2026-04-08_SP8192_ParallelResid_ScoreFirstTTT": ("warn", [], ["claim_matches_logs"]),
    "2026-04-09_A2_Muon097_3Seed": ("pass", [], []),          # calibration 588.1 + 12.8 s: within the 1 s grace
    # seed 42 ran a 36-byte longer script with two more TTT keys than seeds 314/999 and the shipped one
    "2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT": ("warn", [], ["config_consistency", "script_size"]),
    # logs/train2.txt ran another script version (its dump lacks the etlb_* keys); train_gpt.py trains a
    # throwaway copy on validation tokens in a compile warm-up
    "2026-04-10_VarLenAttn": ("warn", [], ["config_consistency", "script_size", "script_static"]),
    "2026-04-13_VarLenAttn_PhasingTTT2000": ("warn", [], ["script_static"]),   # the same warm-up
    "2026-04-14_MultiPhaseGlobalSGD_PhasedTTT": ("pass", [], []),
    "2026-04-16_SmearGate_AttentionOutputGate_ScoreFirstTTT": ("warn", [], ["claim_matches_logs"]),  # artifact size
    # train_seed0.log is a seed-1337 run of an older script (28,320 B code vs 30,985 B): the label is wrong
    "2026-04-18_PR1626_CaseOps_Taper": ("fail", ["seed_labels"], ["config_consistency", "script_size"]),
    "2026-04-19_SP8192_CaseOps_GatedAttn_QuantGate_Loop45_PhasedTTT": ("pass", [], []),
    "2026-04-22_SP8192_CaseOps_GatedAttn_QuantGate_Loop45_PhasedTTT_MLPClip12": ("pass", [], []),
    # the scores are the eval-only TTT reruns in ttt_pr1767/ (seed_results to 5 decimals); their artifacts and
    # training are the train_seed*.log, where calibration ends at 603.1 s
    "2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE": (
        "warn", [], ["train_data_after_timer"]),
    # the top of the leaderboard: 157,868 B ran, 158,429 B shipped; calibration ends at 604.1-604.3 s
    "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611": ("warn", [], ["script_size",
                                                                                  "train_data_after_timer"]),
    "2026-04-27_SmearGateBOSFix_PR1787Base_LQERAsym_PhasedTTT": ("warn", [], ["seed_count", "train_data_after_timer"]),
    # reruns kept apart, originals count: 151,766 B ran, 152,661 B shipped; calibration ends at 603.0-603.1 s
    "2026-04-29_SmearGateBOSFix_3Seed_1.06141": ("warn", [], ["script_size", "train_data_after_timer"]),
    # ---- track_non_record_16mb: no time limits, no seed minimum, any hardware, own file names ----
    "2026-03-18_Quasi10Bfrom50B_SP1024_9x512_KV4_4h_pgut3": ("pass", [], []),   # 4 hours of training: allowed here
    "2026-03-19_SwiGLU_WarmdownFix_QuarterBatch_1x5090": ("warn", [], ["logs_present"]),   # a write-up, no logs
    "2026-03-21_DepthRecurrence_MixedPrecisionQuant": ("warn", [], ["logs_present"]),
    # the log never reaches a final score; its own total is 16,638,468 bytes (over the cap); 80,288 B ran,
    # 80,773 B shipped
    "2026-03-23_DGAttention_DavidGao": ("fail", ["artifact_cap"], ["logs_present", "script_size"]),
    "2026-03-24_106M_Binary_Asymmetric_UNet_FP8_15L_8192BPE_YaRN_NeoMuon_Smear": ("pass", [], []),  # 769 s eval
    # the claim (1.2064) is train_log_bpe_100k_steps.txt's final_sliding; its embedded source lacks the
    # TEMP_CALIB and sigreg-checkpoint code of the shipped train_jepa_ssm.py
    "2026-03-26_37M_LeWM_Jepa_Mamba2_10L_UNet_INT4FP8QAT_Brotli": ("fail", ["provenance"], []),
    # the claim (1.35945128) is train_byte260_4h.log, whose source differs from train_gpt_hnet_byte.py
    # (associative_scan, MODEL_SAVE_PATH, the chunk routing); 57,968 B ran, 57,465 B shipped
    "2026-03-29_HNet_ByteVsSubword_Study": ("fail", ["provenance"], ["script_size"]),
    "2026-03-29_LLaDA_MDLM_Diffusion": ("warn", [], ["logs_present"]),
    "2026-03-30_ByteJEPA": ("pass", [], []),
    # the claim 1.2266 comes from a post-hoc re-quantisation with no log (README); the log scores a subset
    # ("eval: 100 batches (limited)"), hence bytes/token 0.35% off the table
    "2026-03-31_LegendreGPT": ("fail", ["claim_matches_logs"], ["bpb_consistency"]),
    # submission.json calls the 32k "default seed" run (1.4703) seed 1341; that log's header says seed 1342
    # (seed 1341 is a 16k run); the two claimed 32k runs agree, and ran the shipped train_gpt_gdn.py
    "2026-04-04_GDN_Hybrid_LongContext": ("fail", ["claim_matches_logs"], []),
    # bytes/token 2.5888 on sp1024 (+6.3%): the sliding-window bpb of every 10-minute log does not follow from
    # its loss and the canonical byte count; no submission.json (a write-up with logs)
    "2026-04-05_118M_XNOR-Net_FP8_1024D_10L": ("fail", ["bpb_consistency"], ["required_files"]),
    # scored on 40,538,112 tokens: the canonical 40,540,160 cut to whole 4096-token sequences
    "2026-04-15_Mamba3Hybrid_SP8192_GPTQ_TTT": ("pass", [], []),
    # all three logs print seed:1337, two are named seed_2026 and seed_42; train_seed_1337.txt's source
    # differs from train_gpt.py only in indentation (3 spaces vs 4 at line 501)
    "2026-04-30_Random_Linear_Adapter": ("fail", ["seed_labels"], ["provenance"]),
}


# logs without a final score, each for a reason its own text shows
UNSCORED = {
    # a driver's summary (start/stop times and result JSON), not a training log
    "2026-04-23_SP8192_CaseOps_SparseGate_QuantGate_Loop45_PhasedTTT_PolarNS_MinLR_FusedCE/ttt_pr1767/summary.log",
    "2026-03-23_DGAttention_DavidGao/train.log",                 # ends at the size lines, before any evaluation
    # 10-step evolution-strategy probes: only a step-10 validation line, no final evaluation
    "2026-04-05_118M_XNOR-Net_FP8_1024D_10L/log_eggroll_3-last-layers.txt",
    "2026-04-05_118M_XNOR-Net_FP8_1024D_10L/log_eggroll_all-layers-perturbed.txt",
}


def test_every_folder_is_pinned():
    assert sorted(f.name for f in FOLDERS) == sorted(EXPECTED)
    assert len(FOLDERS) == 60 and sum(len(find_logs(f)) for f in FOLDERS) >= 165


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_audit_every_folder(folder):
    for log in find_logs(folder):
        runs = parse_log(log)
        rel = f"{folder.name}/{log.relative_to(folder)}"
        assert runs and (any(r.metric for r in runs) or rel in UNSCORED), f"{log}: no scored run"
    a = audit(load(folder))
    assert [c["id"] for c in a["checks"]] == list(CHECK_IDS)
    assert all(c["detail"] for c in a["checks"])
    json.dumps(a, allow_nan=False)
    fails = sorted(c["id"] for c in a["checks"] if c["status"] == "fail")
    warns = sorted(c["id"] for c in a["checks"] if c["status"] == "warn")
    assert (overall(a), fails, warns) == EXPECTED[folder.name], [
        f"{c['id']} {c['status']}: {c['detail']}" for c in a["checks"] if c["status"] in ("fail", "warn")]
    assert a["verdict"] == ("fail" if fails else "pass")
