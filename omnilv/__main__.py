from omnilv.cli import app

app()
