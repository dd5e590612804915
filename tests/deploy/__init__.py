"""Deployment tests: the shipped files on real Mosquitto and on a booted Debian 12."""
