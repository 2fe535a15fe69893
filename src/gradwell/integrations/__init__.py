"""The stability doctor as a callback of other trainers: ``lightning`` (Lightning's Trainer) and
``hf`` (Hugging Face's). Import the one you use; importing gradwell imports neither framework.

    from gradwell.integrations.lightning import DoctorCallback   # pip install 'gradwell[lightning]'
    from gradwell.integrations.hf import DoctorCallback          # pip install 'gradwell[hf]'

Each is a thin adapter over ``gradwell.diagnose.Doctor``: it attaches on the main process only,
tells the doctor which optimizer steps to measure, and keeps ``.report`` when training ends.
"""
