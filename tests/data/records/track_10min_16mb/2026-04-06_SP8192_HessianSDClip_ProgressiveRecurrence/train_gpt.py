exec(open(__file__.replace("train_gpt.py","train_gpt_decode.py")).read())
