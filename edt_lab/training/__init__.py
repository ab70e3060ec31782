"""Training, one module per concern; import from the modules (this package imports nothing, so the train command
reads its defaults from `recipe` without loading torch):

    recipe      the released defaults the command shows (no torch)
    state       TrainState: model, EMA, optimiser, LR schedule, timestep sampler, data position, random streams
    step        pass_losses and train_step
    batches     the data order (StepBatches) and batches indexed on the device
    run_folder  the run's folder, checkpoints, resume checks
    loop        train(): the loop of `edt-lab train`
    profile     ops and time of a step inside and outside the model's forward and backward
"""
