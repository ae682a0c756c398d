# frozen_string_literal: true

# Lets Bundler.require load the gem by its name.
require "anycable_rs"
