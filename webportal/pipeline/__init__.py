"""The worker's side of the portal: the batch job (batch_job, pixels), the batch guard's
verdict (verdict), the sweeper, the classifiers a worker process keeps loaded, Grad-CAM
(explain) and a lab's fine-tune (adaptation). The only portal package that imports PyTorch or
torch-side `ml` modules; the web process never imports it."""
