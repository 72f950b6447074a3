"""``headstart finetune``: its plan, what it chooses itself (rates, depth, augmentation), the
end-to-end and on-cache fits, the stage gate, the final measures and its outputs."""
