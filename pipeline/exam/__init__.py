"""The exam's learner workflows: LeNet training, worked examples, the pruning report, their CLI."""
